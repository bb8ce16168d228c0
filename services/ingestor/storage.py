"""The ingestor's table of archived versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class ArchivedVersion:
    archive_id: str
    version: int
    sha256: str
    size_bytes: int
    storage_path: str
    archived_at: datetime


class ArchiveStore:
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
