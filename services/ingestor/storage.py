"""The ingestor's table of archived versions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from skyport.bus import BatchHandler, Handler
from skyport.db import Database, enqueue_many, idempotent, idempotent_batch
from skyport.events import CloudEvent


@dataclass(frozen=True)
class ArchivedVersion:
    archive_id: str
    version: int
    sha256: str
    size_bytes: int
    storage_path: str
    archived_at: datetime


class VersionStore:
    """The ``archived_files`` and ``superseded_contents`` tables, on a connection the caller's transaction holds."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock(self, archive_id: str) -> None:
        """Serialise ingestions of one archive ID until the transaction ends (versions are numbered in order)."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('skyport.ingest.' || $1))", archive_id)

    async def versions(self, archive_id: str) -> list[ArchivedVersion]:
        rows = await self.conn.fetch(
            "SELECT archive_id, version, sha256, size_bytes, storage_path, archived_at FROM archived_files "
            "WHERE archive_id = $1 ORDER BY version",
            archive_id,
        )
        return [ArchivedVersion(**dict(row)) for row in rows]

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
        archived_at: datetime = await self.conn.fetchval(
            "INSERT INTO archived_files (archive_id, version, sha256, size_bytes, storage_path, mission, instrument, "
            "level, original_filename, transfer_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "RETURNING archived_at",
            archive_id,
            version,
            sha256,
            size_bytes,
            storage_path,
            mission,
            instrument,
            level,
            original_filename,
            transfer_id,
        )
        return archived_at

    async def superseded(self, archive_id: str) -> dict[str, int]:
        """Content a complete file replaced here: sha256 -> the version holding the complete file."""
        rows = await self.conn.fetch(
            "SELECT sha256, version FROM superseded_contents WHERE archive_id = $1", archive_id
        )
        return {row["sha256"]: row["version"] for row in rows}

    async def replace(
        self, *, archive_id: str, version: int, sha256: str, size_bytes: int, transfer_id: str
    ) -> datetime:
        """The complete file's content replaces a version's partial content (same version, same storage path).

        Stamped with the time of the statement, after the archive ID's lock, so that each replacement is newer than
        the content it replaces: the catalog goes by that order.
        """
        archived_at: datetime = await self.conn.fetchval(
            "UPDATE archived_files SET sha256 = $3, size_bytes = $4, transfer_id = $5, "
            "archived_at = clock_timestamp(), scrubbed_at = NULL WHERE archive_id = $1 AND version = $2 "
            "RETURNING archived_at",
            archive_id,
            version,
            sha256,
            size_bytes,
            transfer_id,
        )
        return archived_at

    async def supersede(
        self, archive_id: str, contents: list[tuple[str, int, bool]], *, version: int, transfer_id: str
    ) -> None:
        """Record content (sha256, size, whether it was archived) that the complete file in ``version`` replaces."""
        await self.conn.executemany(
            "INSERT INTO superseded_contents (archive_id, sha256, size_bytes, version, archived, transfer_id) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (archive_id, sha256) DO NOTHING",
            [(archive_id, sha256, size, version, archived, transfer_id) for sha256, size, archived in contents],
        )


@dataclass(frozen=True)
class ScrubCandidate:
    """An archived version due for the scrubber: what its bytes in storage must be."""

    archive_id: str
    version: int
    sha256: str
    size_bytes: int
    storage_path: str


class PostgresScrubRecords:
    """What the scrubber reads and writes (``scrubbed_at`` and ``scrub_findings``), each call its own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(self, older_than: timedelta, limit: int) -> list[ScrubCandidate]:
        """Versions not hashed again (or archived) for ``older_than``, the longest waiting first."""
        rows = await self.db.pool.fetch(
            "SELECT archive_id, version, sha256, size_bytes, storage_path FROM archived_files "
            "WHERE coalesce(scrubbed_at, archived_at) <= now() - $1::interval "
            "ORDER BY coalesce(scrubbed_at, archived_at) LIMIT $2",
            older_than,
            limit,
        )
        return [ScrubCandidate(**dict(row)) for row in rows]

    async def scrubbed(
        self, candidate: ScrubCandidate, problem: str | None, found_sha256: str | None, found_size: int | None
    ) -> bool:
        """Note that ``candidate`` was hashed again, with the problem found (None: sound); False if the version
        changed meanwhile (a complete file replaced it), when what was found says nothing of what is there now."""
        async with self.db.transaction() as conn:
            updated = await conn.fetchval(
                "UPDATE archived_files SET scrubbed_at = now() "
                "WHERE archive_id = $1 AND version = $2 AND sha256 = $3 RETURNING true",
                candidate.archive_id,
                candidate.version,
                candidate.sha256,
            )
            if not updated:
                return False
            if problem is not None:
                await conn.execute(
                    "INSERT INTO scrub_findings (archive_id, version, storage_path, expected_sha256, expected_size, "
                    "found_sha256, found_size, problem) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    candidate.archive_id,
                    candidate.version,
                    candidate.storage_path,
                    candidate.sha256,
                    candidate.size_bytes,
                    found_sha256,
                    found_size,
                    problem,
                )
            return True


class PostgresUnitOfWork:
    """The ingestor's tables on one connection, and its outbox: an event published here commits with the rows.

    The events are kept until :meth:`flush`, which writes them all in one statement: a batch of files costs one
    round trip to the outbox. The database's transactions and consumers flush before they commit.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.versions = VersionStore(conn)
        self._events: list[CloudEvent[Any]] = []

    async def publish(self, event: CloudEvent[Any]) -> None:
        self._events.append(event)

    async def flush(self) -> None:
        events, self._events = self._events, []
        await enqueue_many(self.conn, events)


class PostgresIngestorDatabase:
    """The ingestor's schema as its consumer uses it (see ``ingest.IngestorDatabase``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresUnitOfWork]:
        async with self.db.transaction() as conn:
            unit = PostgresUnitOfWork(conn)
            yield unit
            await unit.flush()

    def consumer(self, name: str, handler: Callable[[PostgresUnitOfWork, CloudEvent[Any]], Awaitable[None]]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
            unit = PostgresUnitOfWork(conn)
            await handler(unit, event)
            await unit.flush()

        return idempotent(self.db, name, handle)

    def batch_consumer(
        self, name: str, handler: Callable[[PostgresUnitOfWork, Sequence[CloudEvent[Any]]], Awaitable[None]]
    ) -> BatchHandler:
        async def handle(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
            unit = PostgresUnitOfWork(conn)
            await handler(unit, events)
            await unit.flush()

        return idempotent_batch(self.db, name, handle)
