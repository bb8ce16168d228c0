"""The journal's burst operations: many files recorded in one transaction, the scheduler's reads leave out its work."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.monitor.journal import FileState, Journal


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(tmp_path / "journal.sqlite3", sync_every_commit=False)
    try:
        yield journal
    finally:
        await journal.close()


async def test_a_burst_is_recorded_by_the_rules_of_one_file(journal: Journal) -> None:
    await journal.record("raw/a.fits", 10, 1_700_000_000_123_456_789)
    await journal.note("raw/b.fits", 20, 2, FileState.WAITING, "waiting for its marker file")
    (entry,) = await journal.due((FileState.DETECTED,), now=1e12)
    await journal.evaluated(entry, "ARCHIVE-A", "{}")

    recorded = await journal.record_many(
        [
            ("raw/a.fits", 10, 1_700_000_000_123_456_789, None),  # journaled as it is: not again
            ("raw/b.fits", 20, 2, None),  # was waiting: taken now
            ("raw/c.fits", 30, 3, '[{"sha256": "00", "size_bytes": 1}]'),  # new, with what it replaces
        ]
    )

    assert recorded == {"raw/b.fits", "raw/c.fits"}
    entries = await journal.get_many(["raw/a.fits", "raw/b.fits", "raw/c.fits", "raw/unknown.fits"])
    assert {path: e.state for path, e in entries.items()} == {
        "raw/a.fits": FileState.EVALUATED,
        "raw/b.fits": FileState.DETECTED,
        "raw/c.fits": FileState.DETECTED,
    }
    assert entries["raw/a.fits"].written_at == pytest.approx(1_700_000_000.123456789)
    assert entries["raw/c.fits"].replaces == '[{"sha256": "00", "size_bytes": 1}]'
    assert await journal.record_many([("raw/a.fits", 11, 4, None)]) == {"raw/a.fits"}  # changed: starts over
    assert (await journal.get_many(["raw/a.fits"]))["raw/a.fits"].state is FileState.DETECTED


async def test_the_files_under_way_are_left_out_of_what_is_due(journal: Journal) -> None:
    await journal.record_many([(f"raw/{n}.fits", 1, n, None) for n in range(5)])
    under_way = {"raw/0.fits", "raw/1.fits", "raw/2.fits", "raw/3.fits"}

    due = await journal.due((FileState.DETECTED, FileState.EVALUATED), now=1e12, exclude=under_way)

    assert [e.path for e in due] == ["raw/4.fits"]
    # Nothing left but the files under way: no file to wake the scheduler for.
    assert await journal.next_due_at((FileState.DETECTED,), exclude={*under_way, "raw/4.fits"}) is None
    assert await journal.next_due_at((FileState.DETECTED,), exclude=under_way) == 0.0


async def test_the_commands_connection_syncs_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    monitor = await Journal.open(path, sync_every_commit=False)
    command = await Journal.open(path, create=False)
    try:
        # 1 = NORMAL (the monitor: what a power cut rolls back is found again), 2 = FULL (`skyport monitor closed`).
        for journal, expected in ((monitor, 1), (command, 2)):
            async with journal.db.execute("PRAGMA synchronous") as cursor:
                row = await cursor.fetchone()
            assert row is not None
            assert row[0] == expected
        await command.signal_closed("raw/a.fits", 1, 1)
    finally:
        await command.close()
        await monitor.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT path FROM signals").fetchall() == [("raw/a.fits",)]


async def test_a_burst_recorded_while_other_files_move_on_breaks_neither(journal: Journal) -> None:
    await journal.record_many([(f"raw/old{n}.fits", 1, n, None) for n in range(20)])
    moving = await journal.due((FileState.DETECTED,), now=1e12, limit=100)

    # One connection for every coroutine: the burst's statement must be over before anyone else commits.
    await asyncio.gather(
        *(
            step
            for n, entry in enumerate(moving)
            for step in (
                journal.evaluated(entry, f"ARCHIVE-{n}", "{}"),
                journal.record_many([(f"raw/new{n}-{m}.fits", 1, m, None) for m in range(10)]),
            )
        )
    )

    assert await journal.counts() == {FileState.DETECTED: 200, FileState.EVALUATED: 20}
