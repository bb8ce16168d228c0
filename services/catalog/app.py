"""Wiring of the catalog: the file.archived consumer, the outbox relay, the release scheduler and the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.catalog.cataloguing import CatalogMetrics, Cataloguer
from services.catalog.handlers.events import on_file_archived, on_file_archived_batch
from services.catalog.handlers.http import CatalogApi
from services.catalog.releases import ReleaseScheduler
from services.catalog.settings import CatalogSettings
from skyport.bus import Batching, Subscription
from skyport.bus.topology import CATALOG_FILE_ARCHIVED
from skyport.db import Database, idempotent, idempotent_batch
from skyport.events import FileArchived
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec

QUEUE = CATALOG_FILE_ARCHIVED.name
CONSUMER = "catalog"
"""The name under which handled file.archived event ids are recorded (skyport.db.idempotency)."""


def file_archived_subscription(
    db: Database,
    cataloguer: Cataloguer,
    settings: CatalogSettings,
    *,
    queue: str = QUEUE,
    bindings: tuple[str, ...] = CATALOG_FILE_ARCHIVED.bindings,
) -> Subscription:
    """The file.archived consumer: batches of ``catalog_batch_size`` events per transaction, or one event per
    transaction when that is 1; a failed batch is catalogued again one event at a time (see skyport.bus.Batching).
    """
    handler = idempotent(db, CONSUMER, on_file_archived(cataloguer))
    batching = None
    if settings.catalog_batch_size > 1:
        batch_handler = idempotent_batch(db, CONSUMER, on_file_archived_batch(cataloguer))
        batching = Batching(batch_handler, size=settings.catalog_batch_size, wait=settings.catalog_batch_wait)
    return Subscription(
        queue,
        bindings,
        handler,
        models={FileArchived.event_type: FileArchived},
        prefetch=settings.catalog_concurrency * settings.catalog_batch_size,
        batching=batching,
    )


@asynccontextmanager
async def lifespan(ctx: ServiceContext[CatalogSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    # The instrument configuration says each mission's observing night; nothing else of it is the catalog's.
    nights = load_instruments(settings.instruments_dir).nights()
    cataloguer = Cataloguer(
        settings.catalog_public_url,
        calib_levels=settings.calib_levels,
        nights=nights,
        metrics=CatalogMetrics(ctx.metrics.registry),
    )
    ctx.start_outbox_relay()
    await ctx.subscribe(file_archived_subscription(ctx.database, cataloguer, settings))
    scheduler = ReleaseScheduler(
        ctx.database,
        settings.catalog_public_url,
        interval=settings.release_interval,
        batch=settings.release_batch,
        max_files_per_event=settings.public_event_max_files,
        registry=ctx.metrics.registry,
    )
    ctx.supervise("release scheduler", scheduler.run)

    api = CatalogApi(ctx.database, settings, ctx.metrics.registry, nights=nights)
    async with ctx.serve_http(api.app(), settings.catalog_host, settings.catalog_port, api="catalog"):
        yield


service = ServiceSpec(
    name="catalog",
    settings_class=CatalogSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
