"""The shipped instruments' completion rules against writers pausing between HDUs: archived once, never partial."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg

from skyport.instruments import InstrumentCatalog, load_instruments
from skyport.simulator import Simulator
from tests.e2e.conftest import Archived
from tests.support.flow import Flow
from tests.support.observatory import instruments_with
from tests.support.waiting import eventually


async def test_files_of_writers_pausing_between_hdus_are_archived_once_and_whole(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    await flow.start("monitor")
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31)
    # Each as its instrument writes: HIRES in place with NEXTEND ('fits'), KCWI's pipeline in place then a marker
    # ('marker'), NIRCam's under a temporary name ('rename'); KCWI and NIRCam without NEXTEND.
    writers = [
        asyncio.to_thread(sim.write_file, "HIRES", size_bytes=300_000, mode="inplace", hdu_delay=1.5),
        asyncio.to_thread(
            sim.write_file, "KCWI", "quicklook", size_bytes=300_000, mode="inplace", hdu_delay=1.5, nextend=False
        ),
        asyncio.to_thread(sim.write_file, "NIRCAM", "cal", size_bytes=300_000, hdu_delay=1.5, nextend=False),
    ]
    files = await asyncio.gather(*writers)

    async def all_ingested() -> bool:
        return bool((await flow.monitor_status())["counts"]["ingested"] == len(files))

    await eventually(all_ingested, timeout=60, what="every file ingested")
    archived = await flow.archived()
    assert len(archived) == len(files)  # one version each: nothing partial went first
    rows = {row["archive_id"]: row for row in archived}
    for simulated in files:
        row = rows[simulated.archive_id]
        assert row["version"] == 1
        assert row["sha256"] == hashlib.sha256(simulated.path.read_bytes()).hexdigest()
    history = (await flow.monitor_status())["history"]
    assert not [h for h in history if "changed after it was sent" in h["reason"]]


async def test_a_file_sent_before_it_was_complete_is_replaced_by_the_complete_file_and_the_problem_recorded(
    flow: Flow, archived_events: Archived, tmp_path: Path, unique: str
) -> None:
    # A quiet period shorter than the writer's pauses: the monitor's own guess is wrong, and partial files go out.
    instruments_dir = instruments_with(tmp_path, "HIRES", '[completion]\nrule = "quiet"\nquiet_seconds = 0.5')
    await flow.start("receiver", "ingestor", "catalog")
    await flow.start("monitor", instruments_dir=instruments_dir)
    sim = Simulator(load_instruments(instruments_dir), flow.watch_root, seed=int(unique, 16) % 2**31)
    simulated = await asyncio.to_thread(
        sim.write_file, "HIRES", size_bytes=300_000, mode="inplace", hdu_delay=2.5, nextend=False
    )
    complete = hashlib.sha256(simulated.path.read_bytes()).hexdigest()
    archive_id = simulated.archive_id
    assert archive_id is not None

    async def catalogued_complete() -> bool:
        conn = await asyncpg.connect(flow.database_url)
        try:
            rows = await conn.fetch(
                "SELECT version, sha256 FROM catalog.product_versions WHERE archive_id = $1", archive_id
            )
        finally:
            await conn.close()
        return [tuple(row) for row in rows] == [(1, complete)]

    await eventually(catalogued_complete, timeout=60, what="the complete file catalogued as version 1")
    # The archive holds one version, the complete file, where the partial one was.
    (row,) = await flow.archived()
    assert (row["version"], row["sha256"], row["size_bytes"]) == (1, complete, simulated.path.stat().st_size)
    stored = flow.storage / row["storage_path"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == complete
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]
    # It was sent before it was complete: the archive says what it replaced, and the monitor recorded the problem.
    events = archived_events.by_archive_id()[archive_id]
    assert events[0].replaces is None
    assert {e.version for e in events} == {1}
    replacements = [e for e in events if e.replaces is not None]
    assert replacements
    assert replacements[-1].sha256 == complete
    assert replacements[0].replaces is not None
    assert replacements[0].replaces.sha256 == events[0].sha256
    status = await flow.monitor_status()
    assert status["counts"]["ingested"] == 1
    problems = [h["reason"] for h in status["history"] if h["path"] == simulated.relative_path]
    assert problems
    assert all("changed after it was sent" in p and "the complete file replaces the partial one" in p for p in problems)
