"""Wiring of the ingestor: the transfer.received consumer and the outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.ingestor.archive import ArchiveFiles
from services.ingestor.ingest import Ingestor
from services.ingestor.settings import IngestorSettings
from skyport.bus import Subscription
from skyport.bus.topology import INGESTOR_TRANSFER_RECEIVED
from skyport.db import idempotent
from skyport.events import TransferReceived
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec

QUEUE = INGESTOR_TRANSFER_RECEIVED.name


@asynccontextmanager
async def lifespan(ctx: ServiceContext[IngestorSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    instruments = await asyncio.to_thread(load_instruments, settings.instruments_dir)
    await asyncio.to_thread(settings.storage_dir.mkdir, parents=True, exist_ok=True)
    ingestor = Ingestor(settings.staging_dir, ArchiveFiles(settings.storage_dir), instruments)
    ctx.start_outbox_relay()
    await ctx.subscribe(
        Subscription(
            QUEUE,
            INGESTOR_TRANSFER_RECEIVED.bindings,
            idempotent(ctx.database, "ingestor", ingestor.handle),
            models={TransferReceived.event_type: TransferReceived},
            prefetch=settings.ingest_concurrency,
        )
    )
    yield


service = ServiceSpec(
    name="ingestor",
    settings_class=IngestorSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
