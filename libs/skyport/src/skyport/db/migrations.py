"""Ordered SQL migrations per service schema, applied under an advisory lock and checked at start.

Each service owns one PostgreSQL schema. Its migrations come in streams: the library's own (the outbox
and the idempotency table, ``skyport``) and the service's (the folder its ``ServiceSpec.migrations`` names). Files are
named ``NNNN_what.sql`` and run in order, each in its own transaction with the schema on the search path.
No well-kept migration tool speaks asyncpg without SQLAlchemy, and this needs very little.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from skyport.db.pool import check_identifier

LIBRARY_MIGRATIONS = Path(__file__).with_name("sql")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = structlog.get_logger("skyport.migrations")


class SchemaBehind(RuntimeError):
    """The database schema is older than the code: run ``skyport migrate``."""


class MigrationChanged(RuntimeError):
    """An applied migration file was edited afterwards; write a new migration instead."""


@dataclass(frozen=True)
class Migration:
    stream: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def __str__(self) -> str:
        return f"{self.stream}/{self.version:04d}_{self.name}"


def load_stream(stream: str, directory: Path) -> list[Migration]:
    """The migrations in ``directory``, in order; a file that does not follow the naming rule is an error."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"{path}: migration files are named NNNN_lower_case_words.sql")
        migrations.append(Migration(stream, int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{directory}: migration numbers must run 1, 2, 3, ... without gaps: {versions}")
    return migrations


class Migrator:
    """Brings one schema up to date with its streams of migrations."""

    def __init__(self, schema: str, streams: dict[str, Path]) -> None:
        self.schema = check_identifier(schema)
        self.migrations = [m for stream, path in streams.items() for m in load_stream(stream, path)]

    async def _applied(self, conn: asyncpg.Connection) -> dict[tuple[str, int], str]:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self.schema}.schema_migrations")
        if not exists:
            return {}
        rows = await conn.fetch(f"SELECT stream, version, checksum FROM {self.schema}.schema_migrations")
        return {(r["stream"], r["version"]): r["checksum"] for r in rows}

    async def pending(self, conn: asyncpg.Connection) -> list[Migration]:
        """The migrations not yet applied; raises :class:`MigrationChanged` if an applied one was edited."""
        applied = await self._applied(conn)
        pending = []
        for migration in self.migrations:
            checksum = applied.get((migration.stream, migration.version))
            if checksum is None:
                pending.append(migration)
            elif checksum != migration.checksum:
                raise MigrationChanged(f"{migration} was changed after it was applied to {self.schema}")
        return pending

    async def check(self, conn: asyncpg.Connection) -> None:
        """Raise :class:`SchemaBehind` when migrations are pending: a service refuses to start then."""
        pending = await self.pending(conn)
        if pending:
            names = ", ".join(str(m) for m in pending)
            raise SchemaBehind(
                f"schema {self.schema!r} is behind the code ({len(pending)} pending: {names}); "
                "run `skyport migrate` first"
            )

    async def apply(self, conn: asyncpg.Connection) -> list[Migration]:
        """Apply what is pending, each migration in its own transaction, one migrator at a time."""
        lock_key = f"skyport.migrate.{self.schema}"
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.schema}.schema_migrations (
                        stream     text        NOT NULL,
                        version    integer     NOT NULL,
                        name       text        NOT NULL,
                        checksum   text        NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(),
                        PRIMARY KEY (stream, version))"""
            )
            done = []
            for migration in await self.pending(conn):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {self.schema}, public")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {self.schema}.schema_migrations (stream, version, name, checksum) "
                        "VALUES ($1, $2, $3, $4)",
                        migration.stream,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                log.info("migration applied", schema=self.schema, migration=str(migration))
                done.append(migration)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)
