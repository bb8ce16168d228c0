"""The gateway's one address: each path goes to the service of the table, with only the headers both need.

Two stand-in upstreams (a catalog and a notifier) answer with what reached them, so the tests see what the
gateway passed on and what it kept back. The real notifier behind the gateway: tests/integration/gateway/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from prometheus_client import CollectorRegistry

from services.gateway.catalog_client import CatalogClient
from services.gateway.handlers.http import GatewayApi
from services.gateway.streams import CatalogFeed, GatewayMetrics, Hub
from services.gateway.tickets import Tickets

NAME = web.AppKey("name", str)


async def _echo(request: web.Request) -> web.Response:
    """What reached the upstream: method, path, query, headers and body."""
    body = {
        "upstream": request.app[NAME],
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "headers": dict(request.headers),
        "body": (await request.read()).decode(),
    }
    return web.json_response(body, status=207, headers={"Set-Cookie": "kept=back", "Allow": "GET, PATCH"})


async def _upstream(name: str) -> TestServer:
    app = web.Application()
    app[NAME] = name
    app.router.add_route("*", "/{tail:.*}", _echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@dataclass
class Gateway:
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)


async def _gateway(notifier_url: str | None) -> AsyncIterator[Gateway]:
    catalog = await _upstream("catalog")
    async with aiohttp.ClientSession() as session:
        client = CatalogClient(session, str(catalog.make_url("")).rstrip("/"), "gateway-token")
        metrics = GatewayMetrics(CollectorRegistry())
        hub = Hub(client, metrics)
        api = GatewayApi(
            client,
            hub,
            CatalogFeed(client, hub, poll_interval=60),
            Tickets(30),
            metrics,
            queue_limit=10,
            heartbeat=15,
            notifier_url=notifier_url,
        )
        server = TestServer(api.app(), host="127.0.0.1")
        await server.start_server()
        try:
            yield Gateway(str(server.make_url("")).rstrip("/"), session)
        finally:
            await server.close()
            await catalog.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    notifier = await _upstream("notifier")
    try:
        async for running in _gateway(str(notifier.make_url("")).rstrip("/")):
            yield running
    finally:
        await notifier.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/subscriptions"),
        ("POST", "/v1/subscriptions"),
        ("PATCH", "/v1/subscriptions/12"),
        ("DELETE", "/v1/subscriptions/12"),
        ("POST", "/v1/subscriptions/preview"),
        ("GET", "/v1/unsubscribe"),
        ("POST", "/v1/unsubscribe"),
        ("GET", "/v1/inbox"),
        ("POST", "/v1/inbox/read"),
        ("GET", "/v1/notices/k1/download-script"),
    ],
)
async def test_the_notifiers_paths_and_everything_below_them_go_to_the_notifier(
    gateway: Gateway, method: str, path: str
) -> None:
    status, seen, _ = await gateway.call(method, path, headers={"Authorization": "Bearer tok"})
    assert status == 207
    assert (seen["upstream"], seen["method"], seen["path"]) == ("notifier", method, path)


async def test_a_path_that_only_starts_like_the_notifiers_is_not_the_notifiers(gateway: Gateway) -> None:
    for path in ("/v1/inboxes", "/v1/subscriptions-old", "/v1/noticesx/1"):
        status, body, _ = await gateway.call("GET", path)
        assert (status, body["code"]) == (404, "not_found"), path


async def test_the_catalogs_paths_still_go_to_the_catalog(gateway: Gateway) -> None:
    status, seen, _ = await gateway.call("GET", "/v1/me", headers={"Authorization": "Bearer tok"})
    assert (status, seen["upstream"], seen["path"]) == (207, "catalog", "/v1/me")
    status, body, headers = await gateway.call("POST", "/v1/me")
    assert (status, body["code"], headers["Allow"]) == (405, "method_not_allowed", "GET")


async def test_only_the_headers_both_sides_need_pass_and_the_body_and_query_go_as_they_came(gateway: Gateway) -> None:
    status, seen, headers = await gateway.call(
        "PATCH",
        "/v1/subscriptions/7?limit=5&ticket=tk_not-for-upstreams",
        json={"frequency": "weekly"},
        headers={"Authorization": "Bearer tok", "Cookie": "session=secret", "X-Forwarded-For": "10.0.0.1"},
    )
    assert status == 207
    assert seen["query"] == {"limit": "5"}, "a ticket is the gateway's, never an upstream's"
    assert seen["body"] == '{"frequency": "weekly"}'
    assert seen["headers"]["Authorization"] == "Bearer tok"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["Forwarded"].startswith('host="127.0.0.1:')
    assert "Cookie" not in seen["headers"]
    assert "X-Forwarded-For" not in seen["headers"]
    assert "Set-Cookie" not in headers, "an upstream's cookies do not reach the browser"
    assert headers["Allow"] == "GET, PATCH"


async def test_without_a_notifier_its_paths_say_notifications_are_not_configured() -> None:
    async for gateway in _gateway(notifier_url=None):
        for method, path in (("GET", "/v1/inbox"), ("POST", "/v1/subscriptions"), ("GET", "/v1/unsubscribe")):
            status, body, _ = await gateway.call(method, path, headers={"Authorization": "Bearer tok"})
            assert (status, body["code"]) == (503, "unavailable"), path
            assert body["error"].startswith("notifications are not configured on this gateway")
        status, seen, _ = await gateway.call("GET", "/v1/me")
        assert (status, seen["upstream"]) == (207, "catalog"), "the rest of the page still works"


async def test_a_notifier_that_does_not_answer_is_a_502_in_the_gateways_words() -> None:
    async for gateway in _gateway(notifier_url=f"http://127.0.0.1:{unused_port()}"):
        status, body, _ = await gateway.call("GET", "/v1/inbox", headers={"Authorization": "Bearer tok"})
        assert (status, body["code"]) == (502, "unavailable")
        assert body["error"] == "the notifier is unavailable; try again in a moment"
