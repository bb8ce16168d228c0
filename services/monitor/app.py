"""Wiring of the monitor: journal, instrument rules, archive client, and the work loop. No broker, no PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from services.monitor.client import ArchiveClient
from services.monitor.journal import Journal
from services.monitor.monitor import Monitor, MonitorMetrics
from services.monitor.settings import MonitorSettings
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec


@asynccontextmanager
async def lifespan(ctx: ServiceContext[MonitorSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    instruments = await asyncio.to_thread(load_instruments, settings.instruments_dir)
    # The monitor's own commits skip the fsync: what a power cut can roll back, the journal finds again (_SYNC_NOTE).
    journal = await Journal.open(settings.journal_path, sync_every_commit=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = ArchiveClient(settings.receiver_url, settings.site_token.get_secret_value(), session)
        monitor = Monitor(
            settings, instruments, journal, client, MonitorMetrics(ctx.metrics.registry), supervisor=ctx.supervisor
        )

        async def journal_ok() -> bool:
            try:
                await journal.counts()
            except Exception:
                return False
            return True

        ctx.readiness_checks["journal"] = journal_ok
        ctx.on_stop(monitor.stop)
        await monitor.start()
        ctx.log.info("watching", root=str(settings.watch_root), instruments=len(instruments.instruments))
        try:
            yield
        finally:
            await monitor.stop(0)
            await journal.close()


service = ServiceSpec(name="monitor", settings_class=MonitorSettings, lifespan=lifespan, uses_bus=False)
