"""Wiring of the catalog: the file.archived consumer, the outbox relay, the release scheduler and the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from services.catalog.cataloguing import CatalogMetrics, Cataloguer
from services.catalog.handlers.events import on_file_archived
from services.catalog.handlers.http import CatalogApi
from services.catalog.releases import ReleaseScheduler
from services.catalog.settings import CatalogSettings
from skyport.bus import Subscription
from skyport.db import idempotent
from skyport.events import FileArchived
from skyport.runtime import ServiceContext, ServiceSpec, bound_port

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
    runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.catalog_host, settings.catalog_port)
    await site.start()
    ctx.log.info("catalog API listening", host=settings.catalog_host, port=bound_port(site))
    try:
        yield
    finally:
        await runner.cleanup()  # before the database pool closes


service = ServiceSpec(
    name="catalog",
    settings_class=CatalogSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
