"""Making data public: the release scheduler, and the PI's early release.

Both make products public and put the ``dataset.public`` events announcing them in the outbox in the same
transaction, grouped per program and level (see :func:`services.catalog.dataset_events.public_events`). A
product is public from then on and never announced again, however often the scheduler runs and however
many catalog processes run it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter

from services.catalog.access import Viewer, check_may_release_early
from services.catalog.dataset_events import public_events
from services.catalog.storage.products import AnnouncedFile, ProductStore
from skyport.db import Database, enqueue

log = structlog.get_logger("skyport.catalog.releases")


async def release_due(
    conn: asyncpg.Connection, *, today: date, public_url: str, limit: int = 5000, max_files_per_event: int = 1000
) -> list[AnnouncedFile]:
    """Make public the products whose release date is ``today`` or earlier (at most ``limit``); returns them.

    Run it in a transaction of its own. Only one catalog process releases at a time: another one running
    this meanwhile returns at once with nothing, and the next pass finds whatever is left.
    """
    got_it = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtext('skyport.catalog.release.' || current_schema()))"
    )
    if not got_it:
        return []
    products = ProductStore(conn)
    await products.lock_catalog_order()  # before touching any products row (see storage/products.py)
    due = await products.due_for_release(today, limit)
    if due:
        await _publish(conn, products, due, early=False, public_url=public_url, max_files=max_files_per_event)
    return due


async def release_early(
    conn: asyncpg.Connection,
    viewer: Viewer,
    mission: str,
    propid: str,
    archive_ids: Sequence[str] | None = None,
    *,
    public_url: str,
    max_files_per_event: int = 1000,
) -> list[AnnouncedFile]:
    """The PI (or an administrator) makes a program's data public before their release date.

    All of the program's proprietary products, or those among ``archive_ids`` (others are ignored); returns
    the products made public now (empty if they all were already). :class:`NotAllowed` for anyone else,
    :class:`UnknownProgram` (to an administrator) if there is no such program.
    Run it in the caller's transaction; the events are announced when it commits.
    """
    mission = mission.upper()
    await check_may_release_early(conn, viewer, mission, propid)
    products = ProductStore(conn)
    await products.lock_catalog_order()
    chosen = await products.proprietary_of(mission, propid, archive_ids)
    if chosen:
        await _publish(conn, products, chosen, early=True, public_url=public_url, max_files=max_files_per_event)
        log.info(
            "data released early", mission=mission, propid=propid, products=len(chosen), by=viewer.username or "admin"
        )
    return chosen


async def _publish(
    conn: asyncpg.Connection,
    products: ProductStore,
    files: list[AnnouncedFile],
    *,
    early: bool,
    public_url: str,
    max_files: int,
) -> None:
    made_public = set(await products.make_public([f.archive_id for f in files], early=early))
    for event in public_events([f for f in files if f.archive_id in made_public], public_url, max_files):
        await enqueue(conn, event)


def _today() -> date:
    return datetime.now(UTC).date()


@dataclass
class ReleaseScheduler:
    """Every ``interval`` seconds, makes public the data whose release date has passed (a background task)."""

    db: Database
    public_url: str
    interval: float = 60.0
    batch: int = 5000
    max_files_per_event: int = 1000
    registry: CollectorRegistry | None = None
    today: Callable[[], date] = _today

    def __post_init__(self) -> None:
        self.released = Counter(
            "skyport_catalog_released_total",
            "Products made public by the release scheduler.",
            registry=self.registry,
        )

    async def run(self) -> None:
        """Release until cancelled; a database outage is logged and tried again at the next pass."""
        while True:
            try:
                await self.release_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("release pass failed, will try again", error=repr(exc))
            await asyncio.sleep(self.interval)

    async def release_once(self) -> int:
        """One pass: transactions of at most ``batch`` products until nothing is due; returns how many."""
        total = 0
        while True:
            async with self.db.transaction() as conn:
                released = await release_due(
                    conn,
                    today=self.today(),
                    public_url=self.public_url,
                    limit=self.batch,
                    max_files_per_event=self.max_files_per_event,
                )
            total += len(released)
            if released:
                self.released.inc(len(released))
                programs = sorted({f"{f.mission}/{f.propid}" for f in released})
                log.info("data made public", products=len(released), programs=programs[:20])
            if len(released) < self.batch:
                return total
