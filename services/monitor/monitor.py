"""The monitor's work loop: notice complete files, journal them, evaluate them, upload them, follow them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import structlog
import watchfiles
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.monitor.client import ArchiveClient, ContentMismatch, TransientUploadError, UploadRejected
from services.monitor.dep import FileChanged, evaluate
from services.monitor.journal import FileState, Journal, JournalEntry
from services.monitor.settings import MonitorSettings
from skyport.fits import InvalidFile, looks_complete
from skyport.instruments import InstrumentCatalog
from skyport.transfer import Manifest, TransferState

log = structlog.get_logger("skyport.monitor")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_seconds = Histogram(
            "skyport_monitor_stage_seconds",
            "Time a file spent in each stage: detect (write to journal), evaluate (DEP), upload, ingest (archive).",
            ("stage",),
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.files = Counter(
            "skyport_monitor_files_total", "Files by how their way ended, or retried.", ("outcome",), registry=registry
        )


class Monitor:
    def __init__(
        self,
        settings: MonitorSettings,
        instruments: InstrumentCatalog,
        journal: Journal,
        client: ArchiveClient,
        metrics: MonitorMetrics,
    ) -> None:
        self.settings = settings
        self.root = settings.watch_root.resolve()  # watchfiles reports absolute paths
        self.instruments = instruments
        self.journal = journal
        self.client = client
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._settling: set[str] = set()
        self._stale_checks: set[str] = set()
        self._active: set[str] = set()
        self._work: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._dep = asyncio.Semaphore(settings.dep_concurrency)
        self._uploads = asyncio.Semaphore(settings.upload_concurrency)

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        for name, loop in (
            ("watch", self._watch()),
            ("rescan", self._rescan_forever()),
            ("schedule", self._schedule()),
            ("follow", self._follow()),
        ):
            self._loops.append(asyncio.create_task(loop, name=f"monitor {name}"))

    async def stop(self, timeout: float) -> None:
        """Stop noticing and starting work; give work in flight ``timeout`` seconds; the journal keeps the rest."""
        self._stopping.set()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._work:
            _, pending = await asyncio.wait(self._work, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- noticing files -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        async for changes in watchfiles.awatch(
            self.root, debounce=50, step=10, stop_event=self._stopping, recursive=True, ignore_permission_denied=True
        ):
            for change, name in changes:
                if change is not watchfiles.Change.deleted:
                    self._spawn(self.consider(Path(name)))

    async def _rescan_forever(self) -> None:
        while True:
            try:
                await self.rescan()
            except OSError as exc:
                log.error("rescan failed", error=repr(exc))
            await asyncio.sleep(self.settings.rescan_interval)

    async def rescan(self) -> None:
        """Walk the whole tree: finds what inotify missed, and what was written while the monitor was down."""
        for path in await asyncio.to_thread(_walk, self.root):
            await self.consider(path)

    async def consider(self, path: Path) -> None:
        """Journal ``path`` if it is an instrument's file, complete, and new or changed."""
        try:
            relative = path.relative_to(self.root).as_posix()
        except ValueError:
            return
        if path.name.startswith(".") or relative in self._settling or self.instruments.match(relative) is None:
            return
        self._settling.add(relative)
        try:
            before = await asyncio.to_thread(_complete_size, path)
            if before is None:
                self._watch_for_stale(path, relative)
                return
            if self.settings.settle_seconds:
                await asyncio.sleep(self.settings.settle_seconds)
                if await asyncio.to_thread(_complete_size, path) != before:
                    return  # still being written: its next change brings it back
            await self._record(relative, await asyncio.to_thread(path.stat))
        except FileNotFoundError:
            return
        finally:
            self._settling.discard(relative)

    async def _record(self, relative: str, stat: os.stat_result) -> None:
        if await self.journal.record(relative, stat.st_size, stat.st_mtime_ns):
            self.metrics.stage_seconds.labels("detect").observe(max(0.0, time.time() - stat.st_mtime))
            log.info("file detected", path=relative, bytes=stat.st_size)
            self._wake.set()

    def _watch_for_stale(self, path: Path, relative: str) -> None:
        """A file that stays incomplete-looking (truncated, no END card) is taken after a while, to be reported."""
        if relative in self._stale_checks:
            return
        self._stale_checks.add(relative)

        async def check() -> None:
            try:
                before = await asyncio.to_thread(path.stat)
                await asyncio.sleep(self.settings.incomplete_timeout)
                after = await asyncio.to_thread(path.stat)
                unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
                if unchanged and await asyncio.to_thread(_complete_size, path) is None:
                    log.warning("file never looked complete, evaluating it anyway", path=relative)
                    await self._record(relative, after)
            except FileNotFoundError:
                pass
            finally:
                self._stale_checks.discard(relative)

        self._spawn(check())

    # --- doing the work -----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            for entry in await self.journal.due((FileState.DETECTED, FileState.EVALUATED), now, limit=500):
                if entry.path not in self._active:
                    self._active.add(entry.path)
                    work = self._evaluate(entry) if entry.state is FileState.DETECTED else self._upload(entry)
                    self._spawn(work, entry.path)
            next_due = await self.journal.next_due_at((FileState.DETECTED, FileState.EVALUATED))
            wait = 1.0 if next_due is None else min(1.0, max(0.01, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _spawn(self, work: object, path: str | None = None) -> None:
        async def run() -> None:
            try:
                await work  # type: ignore[misc]
            except Exception:
                log.exception("monitor task failed", path=path)
            finally:
                if path is not None:
                    self._active.discard(path)
                    self._wake.set()

        task = asyncio.create_task(run())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _evaluate(self, entry: JournalEntry) -> None:
        async with self._dep:
            started = time.perf_counter()
            try:
                manifest = await asyncio.to_thread(
                    evaluate,
                    self.instruments,
                    self.root,
                    entry.path,
                    entry.size,
                    shared=self.settings.shared_filesystem,
                )
            except InvalidFile as exc:
                await self.journal.invalid(entry, str(exc))
                self.metrics.files.labels("invalid").inc()
                log.error("file invalid, quarantined", path=entry.path, reason=str(exc))
                return
            except FileNotFoundError:
                await self.journal.failed(entry, "the file disappeared before it was evaluated")
                self.metrics.files.labels("failed").inc()
                return
            except (FileChanged, OSError) as exc:
                await self._retry(entry, f"evaluation interrupted: {exc}")
                return
        self.metrics.stage_seconds.labels("evaluate").observe(time.perf_counter() - started)
        await self.journal.evaluated(entry, manifest.archive_id, manifest.model_dump_json())
        log.info("file evaluated", path=entry.path, archive_id=manifest.archive_id, level=manifest.level)

    async def _upload(self, entry: JournalEntry) -> None:
        assert entry.manifest is not None
        manifest = Manifest.model_validate_json(entry.manifest)
        async with self._uploads:
            started = time.perf_counter()
            try:
                status = await self.client.send(manifest, self.root / entry.path)
            except ContentMismatch as exc:
                await self._retry(entry, str(exc), state=FileState.DETECTED)
                return
            except UploadRejected as exc:
                await self.journal.failed(entry, str(exc))
                self.metrics.files.labels("failed").inc()
                log.error("archive refused the file", path=entry.path, reason=str(exc))
                return
            except TransientUploadError as exc:
                await self._retry(entry, str(exc))
                return
            except FileNotFoundError:
                await self.journal.failed(entry, "the file disappeared before it was uploaded")
                return
        self.metrics.stage_seconds.labels("upload").observe(time.perf_counter() - started)
        await self.journal.uploaded(entry, status.transfer_id)
        log.info("file sent", path=entry.path, archive_id=manifest.archive_id, transfer_id=status.transfer_id)
        await self._settle_transfer(entry, status.state, status.reason)

    async def _retry(self, entry: JournalEntry, reason: str, *, state: FileState | None = None) -> None:
        delay = min(self.settings.max_retry_delay, 0.5 * 2 ** min(entry.attempts, 10)) * random.uniform(0.5, 1.5)
        await self.journal.retry_later(entry, reason, delay, state=state)
        self.metrics.files.labels("retried").inc()
        log.warning("will retry", path=entry.path, reason=reason, delay=round(delay, 2), attempt=entry.attempts + 1)

    # --- following transfers ------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.settings.follow_interval)
            uploaded = await self.journal.due((FileState.UPLOADED,), time.time(), limit=200)
            await asyncio.gather(*(self._check(entry) for entry in uploaded))

    async def _check(self, entry: JournalEntry) -> None:
        assert entry.transfer_id is not None
        try:
            status = await self.client.status(entry.transfer_id)
        except (TransientUploadError, UploadRejected, ContentMismatch) as exc:
            log.debug("transfer status unavailable", path=entry.path, error=str(exc))
            return
        await self._settle_transfer(entry, status.state, status.reason)

    async def _settle_transfer(self, entry: JournalEntry, state: TransferState, reason: str | None) -> None:
        if state is TransferState.INGESTED:
            await self.journal.ingested(entry)
            self.metrics.files.labels("ingested").inc()
            self.metrics.stage_seconds.labels("ingest").observe(max(0.0, time.time() - entry.written_at))
            log.info("file ingested", path=entry.path)
        elif state is TransferState.FAILED:
            await self.journal.failed(entry, f"the archive could not ingest it: {reason}")
            self.metrics.files.labels("failed").inc()
            log.error("archive failed the file", path=entry.path, reason=reason)


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, folders, files in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".")]
        found.extend(Path(directory, name) for name in files if not name.startswith("."))
    return found


def _complete_size(path: Path) -> int | None:
    """The file's size if it looks completely written, else None."""
    if not path.is_file() or not looks_complete(path):
        return None
    return path.stat().st_size
