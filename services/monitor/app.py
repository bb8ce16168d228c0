"""Wiring of the monitor: journal, instrument rules, archive client, and the work loop. No broker, no PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp

from services.monitor.client import ArchiveClient
from services.monitor.dep import DepPool
from services.monitor.journal import Journal
from services.monitor.monitor import Monitor, MonitorMetrics
from services.monitor.settings import MonitorSettings
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec


@asynccontextmanager
async def lifespan(ctx: ServiceContext[MonitorSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    instruments = await asyncio.to_thread(load_instruments, settings.instruments_dir)
    async with AsyncExitStack() as resources:  # closed in reverse order, also when a later one fails to open
        # The monitor's own commits skip the fsync: what a power cut rolls back, the journal finds again (_SYNC_NOTE).
        journal = await Journal.open(settings.journal_path, sync_every_commit=False)
        resources.push_async_callback(journal.close)
        dep_pool = None
        if settings.dep_processes:
            dep_pool = DepPool(settings.instruments_dir, settings.dep_concurrency)
            resources.push_async_callback(dep_pool.close)
            await dep_pool.start()
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        session = await resources.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        client = ArchiveClient(settings.receiver_url, settings.site_token.get_secret_value(), session)
        monitor = Monitor(
            settings,
            instruments,
            journal,
            client,
            MonitorMetrics(ctx.metrics.registry),
            supervisor=ctx.supervisor,
            dep_pool=dep_pool,
        )

        async def journal_ok() -> bool:
            try:
                await journal.counts()
            except Exception:
                return False
            return True

        ctx.readiness_checks["journal"] = journal_ok
        ctx.on_stop(monitor.stop)
        resources.push_async_callback(monitor.stop, 0)
        await monitor.start()
        ctx.log.info("watching", root=str(settings.watch_root), instruments=len(instruments.instruments))
        yield


service = ServiceSpec(name="monitor", settings_class=MonitorSettings, lifespan=lifespan, uses_bus=False)
