"""The receiver's tables: sites with hashed credentials, and the state of every transfer."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from skyport.bus import BatchHandler, Handler
from skyport.db import Database, enqueue_many, idempotent, idempotent_batch
from skyport.events import CloudEvent, IngestCompleted, IngestFailed
from skyport.http import hash_token
from skyport.transfer import Manifest, TransferState, TransferStatus


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    site: str
    manifest: Manifest
    state: TransferState
    reason: str | None
    staged_path: str | None
    version: int | None
    duplicate: bool
    updated_at: datetime

    def status(self) -> TransferStatus:
        return TransferStatus(
            transfer_id=self.transfer_id,
            state=self.state,
            archive_id=self.manifest.archive_id,
            sha256=self.manifest.sha256,
            version=self.version,
            duplicate=self.duplicate,
            reason=self.reason,
            updated_at=self.updated_at,
        )


def _transfer(row: asyncpg.Record) -> Transfer:
    return Transfer(
        transfer_id=str(row["transfer_id"]),
        site=row["site"],
        manifest=Manifest.model_validate_json(row["manifest"]),
        state=TransferState(row["state"]),
        reason=row["reason"],
        staged_path=row["staged_path"],
        version=row["version"],
        duplicate=row["duplicate"],
        updated_at=row["updated_at"],
    )


class SiteStore:
    """Sites and their credentials. The receiver checks a credential here at every request (one indexed lookup),
    never from a copy in memory, so a rotated or removed credential is refused at once by every process."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, name: str) -> str:
        """Register a site (or give it a new credential); returns the token, which is not stored."""
        token = secrets.token_urlsafe(32)
        await self.conn.execute(
            "INSERT INTO sites (name, token_sha256) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, removed_at = NULL",
            name,
            hash_token(token),
        )
        return token

    async def rotate(self, name: str) -> str | None:
        """Give a registered site a new credential, the old one refused from now on; None if there is no such site."""
        token = secrets.token_urlsafe(32)
        updated = await self.conn.fetchval(
            "UPDATE sites SET token_sha256 = $2, removed_at = NULL WHERE name = $1 RETURNING name",
            name,
            hash_token(token),
        )
        return None if updated is None else token

    async def remove(self, name: str) -> bool:
        """Take a site's credential away (its transfers stay on record); False if there is no such site."""
        updated = await self.conn.fetchval(
            "UPDATE sites SET token_sha256 = NULL, removed_at = coalesce(removed_at, now()) WHERE name = $1 "
            "RETURNING name",
            name,
        )
        return updated is not None

    async def site_for(self, token: str) -> str | None:
        name: str | None = await self.conn.fetchval("SELECT name FROM sites WHERE token_sha256 = $1", hash_token(token))
        return name


class TransferStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create(self, site: str, manifest: Manifest) -> tuple[Transfer, bool]:
        """The site's transfer for this archive ID and checksum: created now (True) or found (False)."""
        row = await self.conn.fetchrow(
            "INSERT INTO transfers (transfer_id, site, archive_id, sha256, size_bytes, manifest, state) "
            "VALUES ($1, $2, $3, $4, $5, $6, 'created') ON CONFLICT (site, archive_id, sha256) DO NOTHING "
            "RETURNING *",
            uuid.uuid4(),
            site,
            manifest.archive_id,
            manifest.sha256,
            manifest.size_bytes,
            manifest.model_dump_json(),
        )
        if row is not None:
            return _transfer(row), True
        row = await self.conn.fetchrow(
            "SELECT * FROM transfers WHERE site = $1 AND archive_id = $2 AND sha256 = $3",
            site,
            manifest.archive_id,
            manifest.sha256,
        )
        return _transfer(row), False

    async def get(self, transfer_id: str, *, for_update: bool = False) -> Transfer | None:
        try:
            key = uuid.UUID(transfer_id)
        except ValueError:
            return None
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT * FROM transfers WHERE transfer_id = $1{lock}", key)
        return None if row is None else _transfer(row)

    async def statuses(self, site: str, transfer_ids: Sequence[str]) -> list[TransferStatus]:
        """The states of the site's transfers among ``transfer_ids`` (ids of none are left out), without their
        manifests: a monitor asks this for every file it follows."""
        keys = []
        for transfer_id in transfer_ids:
            try:
                keys.append(uuid.UUID(transfer_id))
            except ValueError:
                continue
        rows = await self.conn.fetch(
            "SELECT transfer_id, state, archive_id, sha256, version, duplicate, reason, updated_at FROM transfers "
            "WHERE site = $1 AND transfer_id = ANY($2::uuid[])",
            site,
            keys,
        )
        return [
            TransferStatus(
                transfer_id=str(row["transfer_id"]),
                state=TransferState(row["state"]),
                archive_id=row["archive_id"],
                sha256=row["sha256"],
                version=row["version"],
                duplicate=row["duplicate"],
                reason=row["reason"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]

    async def set_state(
        self,
        transfer_id: str,
        state: TransferState,
        *,
        reason: str | None = None,
        staged_path: str | None = None,
        version: int | None = None,
        duplicate: bool = False,
    ) -> None:
        await self.conn.execute(
            "UPDATE transfers SET state = $2, reason = $3, staged_path = coalesce($4, staged_path), "
            "version = coalesce($5, version), duplicate = $6, updated_at = now() WHERE transfer_id = $1",
            uuid.UUID(transfer_id),
            state.value,
            reason,
            staged_path,
            version,
            duplicate,
        )

    async def mark_received(self, transfer_id: str, staged_path: str) -> Transfer | None:
        """The transfer received now, its file at ``staged_path``; None if it was not waiting for its content.

        One statement: the row lock it takes orders two uploads of one transfer (from two processes), and only the
        first finds it ``created``.
        """
        row = await self.conn.fetchrow(
            "UPDATE transfers SET state = 'received', staged_path = $2, updated_at = now() "
            "WHERE transfer_id = $1 AND state = 'created' RETURNING *",
            uuid.UUID(transfer_id),
            staged_path,
        )
        return None if row is None else _transfer(row)

    async def record_results(self, results: Sequence[IngestCompleted | IngestFailed]) -> set[str]:
        """Each transfer's verdict in one statement (the last one given for a transfer wins); returns the ids of
        the transfers found."""
        last = {r.transfer_id: r for r in results}
        rows = await self.conn.fetch(
            "UPDATE transfers AS t SET state = r.state, reason = r.reason, version = coalesce(r.version, t.version), "
            "duplicate = r.duplicate, updated_at = now() "
            "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bool[]) "
            "AS r(transfer_id, state, reason, version, duplicate) "
            "WHERE t.transfer_id = r.transfer_id RETURNING t.transfer_id",
            [uuid.UUID(transfer_id) for transfer_id in last],
            [_state(r).value for r in last.values()],
            [r.reason if isinstance(r, IngestFailed) else None for r in last.values()],
            [r.version if isinstance(r, IngestCompleted) else None for r in last.values()],
            [isinstance(r, IngestCompleted) and r.duplicate for r in last.values()],
        )
        return {str(row["transfer_id"]) for row in rows}


def _state(result: IngestCompleted | IngestFailed) -> TransferState:
    return TransferState.INGESTED if isinstance(result, IngestCompleted) else TransferState.FAILED


class PostgresUnitOfWork:
    """The receiver's tables on one connection, and its outbox: an event published here commits with the rows."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.sites = SiteStore(conn)
        self.transfers = TransferStore(conn)

    async def publish(self, event: CloudEvent[Any]) -> None:
        await enqueue_many(self.conn, [event])  # one round trip (the row and its notification)


class PostgresReceiverDatabase:
    """The receiver's schema as the transfer workflow and its consumer use it (see ``transfers.ReceiverDatabase``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresUnitOfWork]:
        async with self.db.transaction() as conn:
            yield PostgresUnitOfWork(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PostgresUnitOfWork]:
        async with self.db.pool.acquire() as conn:
            yield PostgresUnitOfWork(conn)

    def consumer(self, name: str, handler: Callable[[PostgresUnitOfWork, CloudEvent[Any]], Awaitable[None]]) -> Handler:
        async def handle(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
            await handler(PostgresUnitOfWork(conn), event)

        return idempotent(self.db, name, handle)

    def batch_consumer(
        self, name: str, handler: Callable[[PostgresUnitOfWork, Sequence[CloudEvent[Any]]], Awaitable[None]]
    ) -> BatchHandler:
        async def handle(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
            await handler(PostgresUnitOfWork(conn), events)

        return idempotent_batch(self.db, name, handle)
