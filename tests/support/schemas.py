"""A pool on a fresh PostgreSQL schema with the library's migrations and a service's, dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from skyport.db import LIBRARY_MIGRATIONS, Database, Migrator


@asynccontextmanager
async def migrated_schema(
    database_url: str, schema: str, streams: dict[str, Path] | None = None, *, max_size: int = 6
) -> AsyncIterator[Database]:
    """``streams`` are the service's migrations by stream name (e.g. ``{"catalog": ...}``), applied after the
    library's (outbox, processed events)."""
    db = await Database.connect(database_url, schema, min_size=1, max_size=max_size)
    async with db.pool.acquire() as conn:
        await Migrator(schema, {"skyport": LIBRARY_MIGRATIONS, **(streams or {})}).apply(conn)
    try:
        yield db
    finally:
        await db.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()
