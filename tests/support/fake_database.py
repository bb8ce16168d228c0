"""A service's database in memory for the unit tests: transactions one at a time, each committed whole or not at
all as PostgreSQL's are, and consumers that claim each event id in the handler's transaction as ``skyport.db``'s
``idempotent`` and ``idempotent_batch`` do. Each service's fake names its tables and its unit of work."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from skyport.bus import BatchHandler, Handler
from skyport.events import CloudEvent


@dataclass
class BaseTables:
    """What every service's schema holds: the outbox and the handled event ids (consumer, event id)."""

    outbox: list[CloudEvent[Any]] = field(default_factory=list)
    handled: set[tuple[str, str]] = field(default_factory=set)


TablesT = TypeVar("TablesT", bound=BaseTables)
UnitT = TypeVar("UnitT")


class FakeDatabase(Generic[TablesT, UnitT]):
    """Units of work (``unit(tables)``) on a copy of ``tables`` that is put back at commit."""

    def __init__(self, tables: TablesT, unit: Callable[[TablesT], UnitT]) -> None:
        self.tables = tables
        self._unit = unit
        self._lock = asyncio.Lock()

    @property
    def outbox(self) -> list[CloudEvent[Any]]:
        return self.tables.outbox

    @asynccontextmanager
    async def _working(self) -> AsyncIterator[TablesT]:
        async with self._lock:
            working = copy.deepcopy(self.tables)
            yield working
            self.tables = working  # commit; an exception in the block leaves the tables as they were

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitT]:
        async with self._working() as working:
            yield self._unit(working)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[UnitT]:
        """Each statement on its own: on the tables as they are."""
        yield self._unit(self.tables)

    def consumer(self, name: str, handler: Callable[[UnitT, CloudEvent[Any]], Awaitable[None]]) -> Handler:
        async def handle(event: CloudEvent[Any]) -> None:
            async with self._working() as working:
                if (name, event.id) in working.handled:
                    return
                working.handled.add((name, event.id))
                await handler(self._unit(working), event)

        return handle

    def batch_consumer(
        self, name: str, handler: Callable[[UnitT, Sequence[CloudEvent[Any]]], Awaitable[None]]
    ) -> BatchHandler:
        async def handle(events: Sequence[CloudEvent[Any]]) -> None:
            async with self._working() as working:
                fresh = {e.id: e for e in events if (name, e.id) not in working.handled}
                working.handled.update((name, event_id) for event_id in fresh)
                if fresh:
                    await handler(self._unit(working), list(fresh.values()))

        return handle
