"""Wiring of the receiver: the transfer API, the outbox relay, and the ingest-result consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.receiver.handlers.events import on_ingest_result, on_ingest_results
from services.receiver.handlers.http import TransferApi
from services.receiver.settings import ReceiverSettings
from services.receiver.staging import Staging
from services.receiver.storage import PostgresReceiverDatabase
from services.receiver.transfers import ReceiverDatabase, ReceiverMetrics, TransferService
from skyport.bus import Batching, Subscription
from skyport.bus.topology import RECEIVER_INGEST_RESULTS
from skyport.events import IngestCompleted, IngestFailed
from skyport.runtime import ServiceContext, ServiceSpec

RESULTS_QUEUE = RECEIVER_INGEST_RESULTS.name
RESULTS_BATCH = 50
"""Ingest results recorded per transaction at most (a burst of files costs one commit per batch)."""
CONSUMER = "receiver"
"""The name under which handled ingest results are recorded (skyport.db.idempotency)."""


def transfer_service(
    database: ReceiverDatabase, settings: ReceiverSettings, registry: CollectorRegistry
) -> TransferService:
    """The transfer workflow on ``database``: PostgreSQL in the service, a fake in the unit tests."""
    return TransferService(
        database,
        Staging(settings.staging_dir),
        ReceiverMetrics(registry),
        max_upload_bytes=settings.max_upload_bytes,
        max_concurrent_uploads=settings.max_concurrent_uploads,
        shared_dir=settings.shared_dir,
    )


def ingest_results_subscription(
    database: ReceiverDatabase,
    *,
    queue: str = RESULTS_QUEUE,
    bindings: tuple[str, ...] = RECEIVER_INGEST_RESULTS.bindings,
) -> Subscription:
    """The ingest.completed / ingest.failed consumer: a batch of verdicts per transaction (one by one when a batch
    fails: see skyport.bus.Batching), once per event id."""
    return Subscription(
        queue,
        bindings,
        database.consumer(CONSUMER, on_ingest_result),
        models={m.event_type: m for m in (IngestCompleted, IngestFailed)},
        prefetch=2 * RESULTS_BATCH,
        batching=Batching(database.batch_consumer(CONSUMER, on_ingest_results), size=RESULTS_BATCH, wait=0.02),
    )


@asynccontextmanager
async def lifespan(ctx: ServiceContext[ReceiverSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    database = PostgresReceiverDatabase(ctx.database)
    transfers = transfer_service(database, settings, ctx.metrics.registry)
    await asyncio.to_thread(transfers.staging.prepare)
    ctx.start_outbox_relay()
    await ctx.subscribe(ingest_results_subscription(database))
    api = TransferApi(transfers)
    async with ctx.serve_http(api.app(), settings.receiver_host, settings.receiver_port, api="transfers"):
        yield


service = ServiceSpec(
    name="receiver",
    settings_class=ReceiverSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
