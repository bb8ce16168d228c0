"""The ingestor's database in memory: archived versions, superseded contents, the outbox and the handled event ids,
with transactions that commit or roll back as PostgreSQL's do. Injected where the service injects
``PostgresIngestorDatabase``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.ingestor.storage import ArchivedVersion
from skyport.events import CloudEvent
from tests.support.fake_database import BaseTables, FakeDatabase


@dataclass
class Tables(BaseTables):
    """What the ingestor's schema holds; a transaction works on a copy and puts it back at commit."""

    versions: dict[str, list[ArchivedVersion]] = field(default_factory=dict)
    superseded: dict[str, dict[str, int]] = field(default_factory=dict)  # archive ID -> sha256 -> version


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


class FakeIngestorDatabase(FakeDatabase[Tables, FakeUnitOfWork]):
    """Transactions one at a time (as the archive ID's lock orders them), each committed whole or not at all."""

    def __init__(self) -> None:
        super().__init__(Tables(), FakeUnitOfWork)
