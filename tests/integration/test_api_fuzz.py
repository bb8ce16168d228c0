"""Schemathesis against every OpenAPI document, served by the real receiver, catalog and gateway processes.

Each operation gets the document's examples, its boundary values and a few random cases; every answer must be
one the document lists (status, content type, body schema), and none may be a server error. A short run stays
in the default suite so that a document and its server cannot drift apart; ``SKYPORT_FUZZ_EXAMPLES`` makes a
long one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.catalog.cataloguing import Cataloguer
from services.catalog.cli import add_program, add_user, issue_token
from skyport.api.errors import ErrorCode, error_code
from skyport.db import Database
from tests.support.catalog import archived
from tests.support.catalog_api import archive_file
from tests.support.flow import REPO, Flow
from tests.support.servers import AMQP_URL, DATABASE_URL

T = TypeVar("T")

EXAMPLES = int(os.environ.get("SKYPORT_FUZZ_EXAMPLES", "20"))
# The documents' own examples, so that the fuzzer reaches a real product, program and member.
ARCHIVE_ID = "HI.20260315.12345.67"
MISSION, PROPID = "KECK", "2026A_U123"

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Running:
    flow: Flow
    user_token: str
    """A user who is the PI of the documents' example program, which has a public product."""


class _Loop:
    """An event loop in a thread: the services' processes live on it while the synchronous fuzzer runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _start(flow: Flow) -> str:
    await flow.prepare()
    # People, the program and its public product are made in-process: each `skyport` command costs seconds.
    db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=2)
    try:
        await add_user(db, "gateway", admin=True)
        flow.settings["SKYPORT_GATEWAY_CATALOG_TOKEN"] = await issue_token(db, "gateway")
        await add_user(db, "fuzzer")
        token = await issue_token(db, "fuzzer")
        await add_program(db, MISSION, PROPID, title="Fuzzing", pi="fuzzer")
        public = archived(ARCHIVE_ID, propid=PROPID, release_date=date(2020, 1, 1))
        await archive_file(db, flow.storage, public, b"SIMPLE  =  T" * 200_000, Cataloguer(flow.catalog_url))
    finally:
        await db.close()
    await flow.start("receiver", "catalog", "gateway")
    return token


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    loop = _Loop()
    flow = Flow(tmp_path_factory.mktemp("fuzz"), AMQP_URL, DATABASE_URL, site=f"fuzz{uuid.uuid4().hex[:10]}")
    try:
        token = loop.run(_start(flow))
        yield Running(flow, token)
    finally:
        loop.run(flow.close())
        loop.close()


def _document(service: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_path(str(REPO / "services" / service / "openapi.yaml"))


# Loaded eagerly: schemathesis' lazy ``from_fixture`` does not work with pytest 9 (it sets Function._nodeid).
catalog = _document("catalog")
schemathesis.serializer.alias("application/fits", "application/octet-stream")  # a file upload is its bytes
receiver = _document("receiver")
gateway = _document("gateway")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Refusals of schema-valid requests that the documents state in words, because OpenAPI cannot express them, by
# their code: joint rules of a search or of a header's metadata, an opaque cursor that must be one the API gave
# out, the receiver's settings, a plain request to the WebSocket address, and no NUL character in any text
# (PostgreSQL cannot hold one). Any other refusal of a valid request is a failure.
_STATED_RULES = {
    ErrorCode.CONFLICTING_PARAMETERS,
    ErrorCode.INCONSISTENT_FIELDS,
    ErrorCode.UNKNOWN_CURSOR,
    ErrorCode.NUL_CHARACTER,
    ErrorCode.NOT_A_WEBSOCKET,
    ErrorCode.SHARED_MODE_DISABLED,
    ErrorCode.PAYLOAD_TOO_LARGE,
}


def accepted_unless_a_stated_rule_refuses(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Schemathesis' ``positive_data_acceptance``, except for a refusal that gives one of the stated rules."""
    if 400 <= response.status_code < 500 and _code(response) in _STATED_RULES:
        return None
    return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]


def _code(response: Any) -> ErrorCode | None:
    try:
        return error_code(response.json())
    except ValueError:
        return None


def _check(case: schemathesis.Case, base_url: str, token: str) -> None:
    case.call_and_validate(
        base_url=base_url,
        headers=_bearer(token),
        timeout=30,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepted_unless_a_stated_rule_refuses],
    )


@catalog.parametrize()
@fuzz_settings
def test_the_catalog_answers_as_its_document_says(case: schemathesis.Case, running: Running) -> None:
    _check(case, running.flow.catalog_url, running.user_token)


@receiver.parametrize()
@fuzz_settings
def test_the_receiver_answers_as_its_document_says(case: schemathesis.Case, running: Running) -> None:
    _check(case, f"http://127.0.0.1:{running.flow.receiver_port}", running.flow.token)


@gateway.parametrize()
@fuzz_settings
def test_the_gateway_answers_as_its_document_says(case: schemathesis.Case, running: Running) -> None:
    _check(case, running.flow.gateway_url, running.user_token)
