"""DEP, Data Evaluation and Processing: validate a file, read its header, checksum it, name it, write its manifest."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path

import structlog

from skyport.fits import InvalidFile, verify_fits
from skyport.instruments import InstrumentCatalog, load_instruments
from skyport.transfer import Manifest

log = structlog.get_logger("skyport.monitor")


class FileChanged(RuntimeError):
    """The file changed while it was evaluated (transient: it is evaluated again once it settles)."""


def evaluate(
    catalog: InstrumentCatalog, watch_root: Path, relative_path: str, expected_size: int, *, shared: bool
) -> Manifest:
    """Evaluate one file (blocking: in a thread or a :class:`DepPool`). Raises :class:`InvalidFile` for a bad file."""
    match = catalog.match(relative_path)
    if match is None:
        raise InvalidFile(f"no instrument configuration covers {relative_path}")
    path = watch_root / relative_path
    # One read of the file gives the verdict, the header and the sha256 of the very bytes verified.
    try:
        summary = verify_fits(path)
    except InvalidFile:
        if path.stat().st_size != expected_size:
            raise FileChanged(f"{relative_path} changed size while it was evaluated") from None
        raise
    evaluation = match.instrument.evaluate(summary.header, path.name, match.product)
    sha256, size = summary.sha256, summary.size_bytes
    stat = path.stat()
    if size != expected_size or stat.st_size != expected_size:
        raise FileChanged(f"{relative_path} changed size while it was evaluated")
    return Manifest(
        archive_id=evaluation.archive_id,
        original_filename=path.name,
        size_bytes=size,
        sha256=sha256,
        mission=evaluation.mission,
        instrument=evaluation.instrument,
        level=evaluation.level,
        propid=evaluation.propid,
        obset=evaluation.obset,
        written_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        metadata=evaluation.metadata,
        shared_path=relative_path if shared else None,
    )


class WorkerLost(RuntimeError):
    """A DEP worker process died during the evaluation (its file is retried like any unexpected error)."""


# How often a worker checks that the monitor that started it is still there (see _start_worker).
_ORPHAN_CHECK_INTERVAL = 0.5
# The catalog each worker process loaded once, in _start_worker.
_worker_catalog: InstrumentCatalog | None = None


def _start_worker(instruments_dir: Path, monitor_pid: int) -> None:
    """Load the instrument catalog once per worker (it is not picklable; reading the folder takes milliseconds), and
    end the worker when the monitor is gone: a killed monitor cannot shut its pool down, and orphaned workers would
    hold its output pipes open (and its CPU) for ever."""
    global _worker_catalog
    _worker_catalog = load_instruments(instruments_dir)
    threading.Thread(target=_exit_with, args=(monitor_pid,), name="dep-orphan-watch", daemon=True).start()


def _exit_with(monitor_pid: int) -> None:
    while os.getppid() == monitor_pid:
        time.sleep(_ORPHAN_CHECK_INTERVAL)
    os._exit(1)


def _evaluate_in_worker(watch_root: Path, relative_path: str, expected_size: int, shared: bool) -> Manifest:
    assert _worker_catalog is not None, "the worker's initializer loads the catalog"
    return evaluate(_worker_catalog, watch_root, relative_path, expected_size, shared=shared)


def _ready() -> None:
    """Nothing: submitted once per worker at start so the workers import astropy before the first file comes."""


class DepPool:
    """DEP in worker processes, off the interpreter the monitor's event loop runs in.

    DEP's cost is mostly Python (astropy's header parsing, astropy.time): in threads it holds the interpreter lock
    the event loop needs to detect, journal and upload the other files of a burst. Workers are spawned, not
    forked (the monitor runs threads, and a fork copies their locks); each loads the catalog once.
    """

    def __init__(self, instruments_dir: Path, workers: int) -> None:
        self._instruments_dir = instruments_dir
        self._workers = workers
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._instruments_dir, os.getpid()),
        )

    async def start(self) -> None:
        """Start every worker now (each submission starts one while none is idle), not on the first file."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ready) for _ in range(self._workers)))

    async def evaluate(self, watch_root: Path, relative_path: str, expected_size: int, *, shared: bool) -> Manifest:
        """:func:`evaluate` in a worker. Raises :class:`WorkerLost` when a worker died; the pool is then renewed."""
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, _evaluate_in_worker, watch_root, relative_path, expected_size, shared
            )
        except BrokenProcessPool as exc:
            # Every evaluation in flight fails with the pool; the first to see it renews the pool for all.
            if self._executor is executor:
                log.error("DEP worker died, renewing the pool", error=repr(exc))
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise WorkerLost(f"the DEP worker evaluating {relative_path} died: {exc}") from exc

    async def close(self) -> None:
        """Wait for the evaluations in flight (the monitor's stop already bounded them) and end the workers."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
