"""The ingestor's database in memory: archived versions, superseded contents, the outbox and the handled event ids,
with transactions that commit or roll back as PostgreSQL's do. Injected where the service injects
``PostgresIngestorDatabase``."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.ingestor.ingest import BatchEventHandler, EventHandler
from services.ingestor.storage import ArchivedVersion
from skyport.bus import BatchHandler, Handler
from skyport.events import CloudEvent


@dataclass
class Tables:
    """What the ingestor's schema holds; a transaction works on a copy and puts it back at commit."""

    versions: dict[str, list[ArchivedVersion]] = field(default_factory=dict)
    superseded: dict[str, dict[str, int]] = field(default_factory=dict)  # archive ID -> sha256 -> version
    outbox: list[CloudEvent[Any]] = field(default_factory=list)
    handled: set[tuple[str, str]] = field(default_factory=set)  # (consumer, event id)


class FakeVersions:
    """As ``VersionStore``."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    async def lock(self, archive_id: str) -> None:
        """Nothing to do: the fake runs one transaction at a time."""

    async def versions(self, archive_id: str) -> list[ArchivedVersion]:
        return sorted(self.tables.versions.get(archive_id, []), key=lambda v: v.version)

    async def superseded(self, archive_id: str) -> dict[str, int]:
        return dict(self.tables.superseded.get(archive_id, {}))

    async def add(
        self,
        *,
        archive_id: str,
        version: int,
        sha256: str,
        size_bytes: int,
        storage_path: str,
        mission: str,
        instrument: str,
        level: str,
        original_filename: str,
        transfer_id: str,
    ) -> datetime:
        versions = self.tables.versions.setdefault(archive_id, [])
        if any(v.version == version for v in versions):
            raise AssertionError(f"version {version} of {archive_id} exists already (the primary key)")
        archived_at = datetime.now(UTC)
        versions.append(ArchivedVersion(archive_id, version, sha256, size_bytes, storage_path, archived_at))
        return archived_at

    async def replace(
        self, *, archive_id: str, version: int, sha256: str, size_bytes: int, transfer_id: str
    ) -> datetime:
        archived_at = datetime.now(UTC)
        self.tables.versions[archive_id] = [
            replace(v, sha256=sha256, size_bytes=size_bytes, archived_at=archived_at) if v.version == version else v
            for v in self.tables.versions[archive_id]
        ]
        return archived_at

    async def supersede(
        self, archive_id: str, contents: list[tuple[str, int, bool]], *, version: int, transfer_id: str
    ) -> None:
        known = self.tables.superseded.setdefault(archive_id, {})
        for sha256, _size, _archived in contents:
            known.setdefault(sha256, version)


class FakeUnitOfWork:
    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.versions = FakeVersions(tables)

    async def publish(self, event: CloudEvent[Any]) -> None:
        self.tables.outbox.append(event)


class FakeIngestorDatabase:
    """Transactions one at a time (as the archive ID's lock orders them), each committed whole or not at all."""

    def __init__(self) -> None:
        self.tables = Tables()
        self._lock = asyncio.Lock()

    @property
    def outbox(self) -> list[CloudEvent[Any]]:
        return self.tables.outbox

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        async with self._lock:
            working = copy.deepcopy(self.tables)
            yield FakeUnitOfWork(working)
            self.tables = working  # commit; an exception in the block leaves the tables as they were

    def consumer(self, name: str, handler: EventHandler) -> Handler:
        """As ``skyport.db.idempotent``: the event id is claimed in the handler's transaction."""

        async def handle(event: CloudEvent[Any]) -> None:
            async with self.transaction() as unit:
                if (name, event.id) in unit.tables.handled:
                    return
                unit.tables.handled.add((name, event.id))
                await handler(unit, event)

        return handle

    def batch_consumer(self, name: str, handler: BatchEventHandler) -> BatchHandler:
        """As ``skyport.db.idempotent_batch``: the batch's new event ids claimed in the handler's transaction."""

        async def handle(events: Sequence[CloudEvent[Any]]) -> None:
            async with self.transaction() as unit:
                fresh = {e.id: e for e in events if (name, e.id) not in unit.tables.handled}
                unit.tables.handled.update((name, event_id) for event_id in fresh)
                if fresh:
                    await handler(unit, list(fresh.values()))

        return handle
