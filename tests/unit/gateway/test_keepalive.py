"""The gateway's WebSocket pings: a client that stops answering them is closed with 4008 and a close frame."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from services.gateway.catalog_client import Page, User
from services.gateway.handlers.http import GatewayApi
from services.gateway.streams import CLOSE_TOO_SLOW, CatalogFeed, GatewayMetrics, Hub
from services.gateway.tickets import Tickets
from tests.support.waiting import eventually

HEARTBEAT = 0.2
BOB = User("bob", False, ())


class QuietCatalog:
    """The catalog as the stream's handler asks it: bob's token is valid, and nothing is in any backlog."""

    async def user(self, token: str) -> User | None:
        return BOB if token == "bob-token" else None

    async def search(self, token: str, params: Any) -> Page:
        return Page([], "", False)


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    catalog: Any = QuietCatalog()
    metrics = GatewayMetrics(CollectorRegistry())
    hub = Hub(catalog, metrics)
    feed = CatalogFeed(catalog, hub, poll_interval=60)
    feed.position = 0
    api = GatewayApi(catalog, hub, feed, Tickets(30), metrics, queue_limit=10, heartbeat=HEARTBEAT)
    server = TestServer(api.app(), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()


async def connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    # autoping=False: this client answers pings only when the test says so, as a raw WebSocket client would.
    return await session.ws_connect(
        f"{url}/v1/stream?night=2026-11-21",
        headers={"Authorization": "Bearer bob-token"},
        autoping=False,
        heartbeat=None,
    )


async def test_a_client_that_stops_answering_pings_gets_a_close_frame_with_4008(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await connect(session, gateway_url)
        received: list[aiohttp.WSMessage] = []
        while True:
            message = await ws.receive(timeout=20 * HEARTBEAT)
            received.append(message)
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
        kinds = [m.type for m in received]
        assert WSMsgType.PING in kinds  # it was asked, and never answered
        assert received[-1].type == WSMsgType.CLOSE, kinds  # a close frame, not a dropped connection (1006)
        assert received[-1].data == CLOSE_TOO_SLOW
        assert "no answer to a ping" in received[-1].extra
        assert ws.close_code == CLOSE_TOO_SLOW


async def test_a_client_that_answers_pings_stays_connected(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await connect(session, gateway_url)
        pings = 0
        while pings < 6:  # three times as long as an unanswering client lasts
            message = await ws.receive(timeout=20 * HEARTBEAT)
            assert message.type in (WSMsgType.TEXT, WSMsgType.PING), message
            if message.type == WSMsgType.PING:
                pings += 1
                await ws.pong(message.data)
        assert not ws.closed
        await ws.close()
        await eventually(lambda: ws.closed, timeout=5, what="the client's own close")
