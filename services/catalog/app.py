"""Wiring of the catalog: the file.archived consumer, the outbox relay, the release scheduler and the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.catalog.cataloguing import CatalogMetrics, Cataloguer
from services.catalog.handlers.events import on_file_archived
from services.catalog.handlers.http import CatalogApi
from services.catalog.releases import ReleaseScheduler
from services.catalog.settings import CatalogSettings
from skyport.bus import Subscription
from skyport.db import idempotent
from skyport.events import FileArchived
from skyport.runtime import ServiceContext, ServiceSpec

QUEUE = "catalog.file-archived"
CONSUMER = "catalog"
"""The name under which handled file.archived event ids are recorded (skyport.db.idempotency)."""


@asynccontextmanager
async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
    settings = ctx.settings
    assert isinstance(settings, CatalogSettings)
    cataloguer = Cataloguer(
        settings.catalog_public_url, calib_levels=settings.calib_levels, metrics=CatalogMetrics(ctx.metrics.registry)
    )
    ctx.start_outbox_relay()
    await ctx.subscribe(
        Subscription(
            QUEUE,
            (FileArchived.event_type,),
            idempotent(ctx.database, CONSUMER, on_file_archived(cataloguer)),
            models={FileArchived.event_type: FileArchived},
            prefetch=settings.catalog_concurrency,
        )
    )
    scheduler = ReleaseScheduler(
        ctx.database,
        settings.catalog_public_url,
        interval=settings.release_interval,
        batch=settings.release_batch,
        max_files_per_event=settings.public_event_max_files,
        registry=ctx.metrics.registry,
    )
    ctx.spawn(scheduler.run(), "release scheduler")

    api = CatalogApi(ctx.database, settings, ctx.metrics.registry)
    async with ctx.serve_http(api.app(), settings.catalog_host, settings.catalog_port, api="catalog"):
        yield


service = ServiceSpec(
    name="catalog",
    settings_class=CatalogSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
