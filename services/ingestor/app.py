"""Wiring of the ingestor: the transfer.received consumer and the outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.ingestor.archive import ArchiveFiles
from services.ingestor.handlers.events import on_transfer_received, on_transfers_received
from services.ingestor.ingest import Ingestor, IngestorDatabase
from services.ingestor.scrubber import Scrubber, ScrubMetrics
from services.ingestor.settings import IngestorSettings
from services.ingestor.storage import PostgresIngestorDatabase, PostgresScrubRecords
from skyport.bus import Batching, Subscription
from skyport.bus.topology import INGESTOR_TRANSFER_RECEIVED
from skyport.events import TransferReceived
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec

QUEUE = INGESTOR_TRANSFER_RECEIVED.name
CONSUMER = "ingestor"
"""The name under which handled transfer.received event ids are recorded (skyport.db.idempotency)."""


def transfer_received_subscription(
    database: IngestorDatabase,
    ingestor: Ingestor,
    *,
    prefetch: int,
    batch_size: int = 1,
    queue: str = QUEUE,
    bindings: tuple[str, ...] = INGESTOR_TRANSFER_RECEIVED.bindings,
) -> Subscription:
    """The transfer.received consumer, once per event id: ``prefetch`` files at once, each in its own transaction;
    or, with ``batch_size`` above 1, ``prefetch`` batches at once of up to ``batch_size`` files each, one
    transaction per batch, of the files waiting in the queue (none is waited for: a lone file goes alone), and a
    failed batch ingested again one file at a time (see skyport.bus.Batching)."""
    batching = None
    if batch_size > 1:
        batching = Batching(database.batch_consumer(CONSUMER, on_transfers_received(ingestor)), size=batch_size, wait=0)
    return Subscription(
        queue,
        bindings,
        database.consumer(CONSUMER, on_transfer_received(ingestor)),
        models={TransferReceived.event_type: TransferReceived},
        prefetch=prefetch * batch_size,
        batching=batching,
    )


@asynccontextmanager
async def lifespan(ctx: ServiceContext[IngestorSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    instruments = await asyncio.to_thread(load_instruments, settings.instruments_dir)
    await asyncio.to_thread(settings.storage_dir.mkdir, parents=True, exist_ok=True)
    ingestor = Ingestor(settings.staging_dir, ArchiveFiles(settings.storage_dir), instruments)
    ctx.start_outbox_relay()
    if settings.scrub_rate > 0:
        scrubber = Scrubber(
            PostgresScrubRecords(ctx.database),
            ingestor.storage,
            ScrubMetrics(ctx.metrics.registry),
            rate=settings.scrub_rate,
            interval=settings.scrub_interval,
        )
        ctx.supervise("scrubber", scrubber.run)
    await ctx.subscribe(
        transfer_received_subscription(
            PostgresIngestorDatabase(ctx.database),
            ingestor,
            prefetch=settings.ingest_concurrency,
            batch_size=settings.ingest_batch_size,
        )
    )
    yield


service = ServiceSpec(
    name="ingestor",
    settings_class=IngestorSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
