"""Wiring of the gateway: the catalog feed, the event consumer, the heartbeat, and the HTTP/WebSocket server."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp

from services.gateway.catalog_client import CatalogClient
from services.gateway.handlers.events import on_event
from services.gateway.handlers.http import GatewayApi
from services.gateway.settings import GatewaySettings
from services.gateway.streams import CatalogFeed, GatewayMetrics, Hub
from services.gateway.tickets import Tickets
from skyport.bus import Subscription
from skyport.events import EVENT_MODELS
from skyport.runtime import ServiceContext, ServiceSpec

BINDINGS = ("dataset.#", "access.changed.#")


@asynccontextmanager
async def lifespan(ctx: ServiceContext[GatewaySettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    metrics = GatewayMetrics(ctx.metrics.registry)
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        client = CatalogClient(session, settings.gateway_catalog_url, settings.gateway_catalog_token.get_secret_value())
        hub = Hub(client, metrics)
        feed = CatalogFeed(client, hub, poll_interval=settings.gateway_poll_interval)
        ctx.supervise("catalog feed", feed.run)
        ctx.supervise("heartbeats", functools.partial(_heartbeats, hub, settings.gateway_heartbeat))
        ctx.supervise("token rechecks", functools.partial(_rechecks, hub, settings.gateway_recheck_interval))
        ctx.readiness_checks["catalog feed"] = _following(feed)
        # Every gateway needs every event (they are wake-ups, not work to share), hence a queue per instance.
        await ctx.subscribe(
            Subscription(
                f"gateway.{socket.gethostname()}.{os.getpid()}",
                BINDINGS,
                on_event(feed, hub),
                models=EVENT_MODELS,
                prefetch=64,
                transient=True,
            )
        )
        api = GatewayApi(
            client,
            hub,
            feed,
            Tickets(settings.gateway_ticket_ttl),
            metrics,
            queue_limit=settings.gateway_queue_limit,
            heartbeat=settings.gateway_heartbeat,
            public_url=settings.gateway_public_url,
            notifier_url=settings.gateway_notifier_url,
        )
        try:
            async with ctx.serve_http(api.app(), settings.gateway_host, settings.gateway_port, api="gateway"):
                # What start-up made lives for the whole run: keep it out of the collector's full passes,
                # whose pauses (tens of ms with many clients) would otherwise be every client's latency.
                gc.freeze()
                yield
        finally:
            await hub.close()


def _following(feed: CatalogFeed) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return feed.position is not None

    return check


async def _rechecks(hub: Hub, interval: float) -> None:
    while True:
        if hub.streams:
            await hub.recheck(spread=interval)  # takes about ``interval``
        else:
            await asyncio.sleep(interval)


async def _heartbeats(hub: Hub, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        hub.heartbeat()


service = ServiceSpec(name="gateway", settings_class=GatewaySettings, lifespan=lifespan)
