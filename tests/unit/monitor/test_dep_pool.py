"""DEP in worker processes: the same verdicts as in a thread, and a worker that dies costs a retry, not the monitor."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from services.monitor.dep import DepPool, WorkerLost, evaluate
from skyport.fits import InvalidFile
from skyport.instruments import load_instruments
from skyport.simulator import Simulator
from skyport.transfer import Manifest
from tests.support.flow import INSTRUMENTS
from tests.support.observatory import observatory
from tests.support.waiting import eventually


def _workers() -> list[psutil.Process]:
    """This process's DEP workers (spawned children; the resource tracker is a child too, and is left alone)."""
    return [child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())]


async def test_a_worker_gives_the_verdicts_the_thread_gives(tmp_path: Path) -> None:
    catalog = load_instruments(INSTRUMENTS)
    sim = Simulator(catalog, tmp_path, seed=5)
    good = await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
    bad = good.path.with_name("hires9001.fits")
    bad.write_bytes(good.path.read_bytes()[:-2880])  # truncated: the last block is missing
    bad_relative = bad.relative_to(tmp_path).as_posix()
    pool = DepPool(INSTRUMENTS, workers=1)
    try:
        await pool.start()
        manifest = await pool.evaluate(tmp_path, good.relative_path, good.path.stat().st_size, shared=False)
        in_thread = evaluate(catalog, tmp_path, good.relative_path, good.path.stat().st_size, shared=False)
        assert manifest == in_thread
        with pytest.raises(InvalidFile) as from_worker:
            await pool.evaluate(tmp_path, bad_relative, bad.stat().st_size, shared=False)
        with pytest.raises(InvalidFile) as from_thread:
            evaluate(catalog, tmp_path, bad_relative, bad.stat().st_size, shared=False)
        assert str(from_worker.value) == str(from_thread.value)
    finally:
        await pool.close()


async def test_a_worker_that_dies_fails_the_evaluation_in_flight_and_the_pool_goes_on(tmp_path: Path) -> None:
    sim = Simulator(load_instruments(INSTRUMENTS), tmp_path, seed=6)
    good = await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
    stuck = good.path.with_name("hires9002.fits")
    # Opening it blocks the worker until it is killed: the evaluation cannot end before the worker dies, whether the
    # kill finds it queued or under way (every evaluation in flight fails with the pool).
    os.mkfifo(stuck)
    pool = DepPool(INSTRUMENTS, workers=1)
    try:
        await pool.start()
        evaluation = asyncio.ensure_future(
            pool.evaluate(tmp_path, stuck.relative_to(tmp_path).as_posix(), 100_000, shared=False)
        )
        workers = _workers()
        assert len(workers) == 1
        workers[0].kill()
        with pytest.raises(WorkerLost):
            await asyncio.wait_for(evaluation, 30)
        manifest = await pool.evaluate(tmp_path, good.relative_path, good.path.stat().st_size, shared=False)
        assert isinstance(manifest, Manifest)
    finally:
        await pool.close()


async def test_the_monitor_retries_a_file_whose_worker_died(tmp_path: Path) -> None:
    class DyingOnce:
        """A pool whose worker dies on the first file it is given, then evaluates in a thread."""

        def __init__(self) -> None:
            self.calls = 0

        async def evaluate(self, watch_root: Path, relative_path: str, expected_size: int, *, shared: bool) -> Manifest:
            self.calls += 1
            if self.calls == 1:
                raise WorkerLost("the DEP worker died")
            catalog = load_instruments(INSTRUMENTS)
            return await asyncio.to_thread(evaluate, catalog, watch_root, relative_path, expected_size, shared=shared)

    async with observatory(tmp_path) as site:
        pool = DyingOnce()
        site.monitor.dep_pool = pool  # type: ignore[assignment]
        sim = Simulator(load_instruments(site.instruments_dir), site.root, seed=7)
        await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
        await eventually(lambda: len(site.archive.sent) == 1, what="the file sent after its worker died once")
        assert pool.calls == 2
