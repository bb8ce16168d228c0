"""The pool gives connections back without a reset round trip, and still never hands on a holder's leftovers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from skyport.db import Database


@pytest.fixture
async def db(database_url: str, unique: str) -> AsyncIterator[Database]:
    # One connection: whatever one holder leaves behind, the next holder gets.
    database = await Database.connect(database_url, f"pool_{unique}", min_size=1, max_size=1)
    try:
        yield database
    finally:
        await database.close()


async def test_a_plain_release_sends_no_reset(db: Database) -> None:
    async with db.pool.acquire() as conn:
        assert conn.get_reset_query() == ""


async def test_a_transaction_left_open_by_a_failed_holder_is_rolled_back(db: Database, unique: str) -> None:
    table = f"pool_{unique}_rows"
    async with db.pool.acquire() as conn:
        await conn.execute(f"CREATE TEMP TABLE {table} (n int)")

    async def failing_holder() -> None:
        async with db.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            raise RuntimeError("the holder failed before its commit")

    with pytest.raises(RuntimeError):
        await failing_holder()
    async with db.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_a_session_s_locks_and_listeners_end_when_it_goes_back(db: Database, database_url: str) -> None:
    key = 424242
    async with db.session() as conn:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        await conn.execute("LISTEN pool_test")
        await conn.execute("SET statement_timeout = 1234")
    other = await asyncpg.connect(database_url)
    try:
        # Another session takes the lock: the pool's connection let go of it on release.
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", key)
        await other.execute("SELECT pg_advisory_unlock($1)", key)
    finally:
        await other.close()
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        assert conn.get_reset_query() == ""  # the next plain holder pays no reset again
