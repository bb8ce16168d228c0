"""The services' HTTP clients decide on an error's ``code`` and read answers with the answering API's models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.gateway.catalog_client import CatalogClient, CatalogRefused, CatalogUnavailable
from services.monitor.client import ArchiveClient, ContentMismatch, UploadRejected
from skyport.api.errors import ErrorCode
from tests.unit.gateway.test_streams import product

Answer = Callable[[web.Request], web.Response]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Any]]:
    """Starts an in-process server answering every GET with ``answer``; yields its base URL."""
    servers: list[TestServer] = []

    async def start(answer: Answer) -> str:
        async def handle(request: web.Request) -> web.Response:
            return answer(request)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


def refusal(status: int, error: str, code: str) -> Answer:
    return lambda request: web.json_response({"error": error, "code": code}, status=status)


@pytest.mark.parametrize(
    ("error", "code", "raised"),
    [
        # The same cause in other words is still a checksum mismatch...
        ("the content's sha256 is not the manifest's", ErrorCode.CHECKSUM_MISMATCH, ContentMismatch),
        # ...and words that merely begin alike are not.
        ("checksum mismatch is not how this is said: sha256 must be 64 hex digits", ErrorCode.BAD_BODY, UploadRejected),
    ],
)
async def test_the_monitor_decides_a_content_mismatch_on_the_code_not_the_words(
    serve: Callable[[Answer], Any], error: str, code: ErrorCode, raised: type[Exception]
) -> None:
    base_url = await serve(refusal(422, error, code.value))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(raised):
            await ArchiveClient(base_url, "site-token", session).status("t-1")


async def test_the_gateway_reads_a_search_page_with_the_catalogs_model(serve: Callable[[Answer], Any]) -> None:
    listed = product(3).model_dump(mode="json")
    listed["column_added_later"] = "ignored"  # a newer catalog's field does not break an older gateway
    base_url = await serve(
        lambda request: web.json_response({"products": [listed], "next_cursor": listed["cursor"], "more": False})
    )
    async with aiohttp.ClientSession() as session:
        page = await CatalogClient(session, base_url, "service").search("user-token", [])
    assert page.products == [product(3)]
    assert page.products[0].night == date(2026, 11, 20)


async def test_an_answer_missing_a_field_is_the_catalog_failing_not_a_crash_later(
    serve: Callable[[Answer], Any],
) -> None:
    listed = product(3).model_dump(mode="json")
    del listed["mission"]
    base_url = await serve(lambda request: web.json_response({"products": [listed], "next_cursor": "x", "more": False}))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(CatalogUnavailable, match="not what the gateway expects"):
            await CatalogClient(session, base_url, "service").changes("x", 10)


async def test_the_gateway_takes_an_unknown_token_from_the_code_and_passes_on_other_refusals(
    serve: Callable[[Answer], Any],
) -> None:
    async with aiohttp.ClientSession() as session:
        unknown = await serve(refusal(401, "the token is unknown or revoked", "unauthorized"))
        assert await CatalogClient(session, unknown, "service").user("stale") is None
        forbidden = await serve(refusal(403, "for administrators", "forbidden"))
        with pytest.raises(CatalogRefused) as refused:
            await CatalogClient(session, forbidden, "service").position()
        assert refused.value.status == 403
        assert refused.value.code is ErrorCode.FORBIDDEN
