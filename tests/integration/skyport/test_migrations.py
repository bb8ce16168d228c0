"""Schema migrations: ordered, applied once under a lock, and a schema that is behind is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from skyport.db import LIBRARY_MIGRATIONS, Migrator, SchemaBehind
from skyport.db.migrations import MigrationChanged, load_stream


@pytest.fixture
async def schema(database_url: str, unique: str) -> AsyncIterator[str]:
    name = f"mig_{unique}"
    yield name
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    await conn.close()


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(sql)


async def test_migrations_apply_in_order_once_and_then_the_check_passes(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_products.sql", "CREATE TABLE products (archive_id text PRIMARY KEY);")
    write(tmp_path, "0002_size.sql", "ALTER TABLE products ADD COLUMN size_bytes bigint;")
    migrator = Migrator(schema, {"skyport": LIBRARY_MIGRATIONS, "catalog": tmp_path})
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(SchemaBehind, match="run `skyport migrate`"):
            await migrator.check(conn)
        applied = await asyncio.gather(*(_apply(database_url, migrator) for _ in range(3)))
        assert sorted(len(a) for a in applied) == [0, 0, 4]  # three migrators at once: one does the work
        await migrator.check(conn)
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'products'",
            schema,
        )
        assert {c["column_name"] for c in columns} == {"archive_id", "size_bytes"}
        assert await conn.fetchval(f"SELECT to_regclass('{schema}.outbox') IS NOT NULL")

        write(tmp_path, "0003_level.sql", "ALTER TABLE products ADD COLUMN level text;")
        newer = Migrator(schema, {"skyport": LIBRARY_MIGRATIONS, "catalog": tmp_path})
        with pytest.raises(SchemaBehind, match="catalog/0003_level"):
            await newer.check(conn)

        write(tmp_path, "0002_size.sql", "ALTER TABLE products ADD COLUMN size_bytes integer;")
        edited = Migrator(schema, {"skyport": LIBRARY_MIGRATIONS, "catalog": tmp_path})
        with pytest.raises(MigrationChanged, match=r"0002_size was changed"):
            await edited.check(conn)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_done(database_url: str, schema: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE a (x int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE b (y int); SELECT no_such_function();")
    migrator = Migrator(schema, {"svc": tmp_path})
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrator.apply(conn)
        assert [str(m) for m in await migrator.pending(conn)] == ["svc/0002_broken"]
        assert await conn.fetchval(f"SELECT to_regclass('{schema}.b')") is None
    finally:
        await conn.close()


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0003_c.sql", "SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        load_stream("svc", tmp_path)
    write(tmp_path, "2_b.sql", "SELECT 1;")
    with pytest.raises(ValueError, match=r"NNNN_lower_case_words\.sql"):
        load_stream("svc", tmp_path)


async def _apply(database_url: str, migrator: Migrator) -> list[object]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await migrator.apply(conn))
    finally:
        await conn.close()
