"""Wiring of the receiver: the transfer API, the outbox relay, and the ingest-result consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.receiver.handlers.events import on_ingest_result
from services.receiver.handlers.http import ReceiverMetrics, TransferApi
from services.receiver.settings import ReceiverSettings
from skyport.bus import Subscription
from skyport.bus.topology import RECEIVER_INGEST_RESULTS
from skyport.db import idempotent
from skyport.events import IngestCompleted, IngestFailed
from skyport.runtime import ServiceContext, ServiceSpec

RESULTS_QUEUE = RECEIVER_INGEST_RESULTS.name


@asynccontextmanager
async def lifespan(ctx: ServiceContext[ReceiverSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    api = TransferApi(ctx.database, settings, ReceiverMetrics(ctx.metrics.registry))
    await asyncio.to_thread(api.staging.prepare)
    ctx.start_outbox_relay()
    await ctx.subscribe(
        Subscription(
            RESULTS_QUEUE,
            RECEIVER_INGEST_RESULTS.bindings,
            idempotent(ctx.database, "receiver", on_ingest_result),
            models={m.event_type: m for m in (IngestCompleted, IngestFailed)},
        )
    )
    async with ctx.serve_http(api.app(), settings.receiver_host, settings.receiver_port, api="transfers"):
        yield


service = ServiceSpec(
    name="receiver",
    settings_class=ReceiverSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
