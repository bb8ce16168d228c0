"""The embedded PostgreSQL of the demo mode: a folder is enough to get a working database."""

from __future__ import annotations

from pathlib import Path

from skyport.db import LIBRARY_MIGRATIONS, Database, Migrator, enqueue
from skyport.events import CloudEvent, IngestFailed


async def test_an_embedded_database_starts_in_a_folder_and_takes_migrations(tmp_path: Path) -> None:
    db = await Database.connect(f"embedded://{tmp_path}/pg", "demo")
    try:
        async with db.pool.acquire() as conn:
            applied = await Migrator("demo", {"skyport": LIBRARY_MIGRATIONS}).apply(conn)
        assert [str(m) for m in applied] == ["skyport/0001_outbox", "skyport/0002_processed_events"]
        async with db.transaction() as conn:
            await enqueue(conn, CloudEvent.create(IngestFailed(transfer_id="t", reason="r"), source="/tests"))
        assert await db.pool.fetchval("SELECT count(*) FROM outbox") == 1
        assert (tmp_path / "pg" / "PG_VERSION").exists()
    finally:
        await db.close()
