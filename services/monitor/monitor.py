"""The monitor's work loop: notice complete files, journal them, evaluate them, upload them, follow them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import structlog
import watchfiles
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import TypeAdapter

from services.monitor.client import ArchiveClient, ContentMismatch, TransientUploadError, UploadRejected
from services.monitor.completion import Look, Naming, decide, look_at
from services.monitor.dep import DepPool, FileChanged, WorkerLost, evaluate
from services.monitor.journal import NOTED, SENT, FileState, Journal, JournalEntry
from services.monitor.settings import MonitorSettings
from skyport.events import ReplacedContent
from skyport.fits import InvalidFile, sha256_file
from skyport.instruments import InstrumentCatalog
from skyport.runtime import Supervisor
from skyport.transfer import MAX_STATUS_QUERY, Manifest, TransferState

log = structlog.get_logger("skyport.monitor")

# Rules under which the instrument says a file is finished (again, for a file written twice).
_EXPLICIT_RULES = ("rename", "marker", "signal")
# How often files waiting on time (a quiet period, a writer still writing) are looked at again.
_LOOK_INTERVAL = 0.25
# A wait only time ends is noted in the journal (shown by `skyport monitor status`) after this long.
_NOTE_WAIT_AFTER = 10.0
# How many earlier contents of one file a manifest names for the archive to replace (Manifest.replaces).
_REPLACES_KEPT = 16
_REPLACES = TypeAdapter(list[ReplacedContent])
# Files looked at in one thread hop and journaled in one transaction, at most. Smaller batches hand the first files
# of a burst to DEP sooner, but then every later batch's hops wait for the interpreter lock that DEP's threads hold:
# with 32, 300 files closed at once were detected in a median of 0.7-1.5 s, with 256 in 0.3 s, for the same total.
_LOOK_BATCH = 256
# What the scheduler hands out: files to evaluate, files to upload.
_WORK_STATES = (FileState.DETECTED, FileState.EVALUATED)
# Unexpected errors evaluating one file: retried with back-off this many times, then the file is marked invalid.
_UNEXPECTED_ATTEMPTS = 5

# _LOST_CANCELLATION: every loop also ends when ``_stopping`` is set, not only when cancelled. On Python 3.11,
# asyncio.wait_for can swallow a cancellation that arrives as its inner wait completes (CPython gh-86296, fixed in
# 3.12); the loops wait on events set all the time, and a loop that lost its cancellation held the stop for ever.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class _Mark(Enum):
    FOLDER = "folder"
    GONE = "gone"


_FOLDER, _GONE = _Mark.FOLDER, _Mark.GONE
# What one look at a path found: a folder, nothing, an instrument's file, another file (its stat), or an error.
_Outcome = _Mark | Look | os.stat_result | Exception


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


@dataclass
class _Seen:
    """A file the monitor is deciding about: since when it has been unchanged, and what was noted about it."""

    stamp: tuple[int, int] | None = None  # (size, mtime_ns) at the last look
    since: float = 0.0  # monotonic time the stamp last changed
    first: float = 0.0  # monotonic time it was first seen
    noted: str | None = None  # the reason last noted in the journal
    next_look: float = 0.0  # monotonic time to look again (0: at once)


class Monitor:
    def __init__(
        self,
        settings: MonitorSettings,
        instruments: InstrumentCatalog,
        journal: Journal,
        client: ArchiveClient,
        metrics: MonitorMetrics,
        supervisor: Supervisor | None = None,
        dep_pool: DepPool | None = None,
    ) -> None:
        self.settings = settings
        # The runtime's supervisor (the service's readiness reads it); a monitor run alone, in tests, makes its own.
        self.supervisor = supervisor or Supervisor("monitor", log=log)
        self.root = settings.watch_root.resolve()  # watchfiles reports absolute paths
        self.instruments = instruments
        self.naming = Naming(instruments)
        self.journal = journal
        self.client = client
        self.metrics = metrics
        # DEP in worker processes when given one (the service's lifespan does), else in threads (tests).
        self.dep_pool = dep_pool
        self._wake = asyncio.Event()
        self._look_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pending: dict[str, _Seen] = {}
        self._folders_scanned: set[str] = set()  # folders walked when inotify reported them
        self._active: set[str] = set()
        self._work: set[asyncio.Task[None]] = set()
        self._loops: list[str] = []
        self._last_signal = 0
        self._dep = asyncio.Semaphore(settings.dep_concurrency)
        self._uploads = asyncio.Semaphore(settings.upload_concurrency)

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        # Signals given while the monitor was down are found by the start-up scan, through the journal.
        self._last_signal = await self.journal.latest_signal_id()
        loops: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("watch", self._watch),
            ("rescan", self._rescan_forever),
            ("look", self._look_forever),
            ("schedule", self._schedule),
            ("follow", self._follow),
        )
        for name, loop in loops:
            self.supervisor.supervise(name, loop)
            self._loops.append(name)

    async def stop(self, timeout: float) -> None:
        """Stop noticing and starting work; give work in flight ``timeout`` seconds; the journal keeps the rest."""
        self._stopping.set()
        await self.supervisor.stop(self._loops)
        if self._work:
            _, pending = await asyncio.wait(self._work, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- noticing files -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(
            self.root, debounce=50, step=10, stop_event=self._stopping, recursive=True, ignore_permission_denied=True
        ):
            for change, name in changes:
                if change is not watchfiles.Change.deleted:
                    self.notice(Path(name))

    def notice(self, path: Path) -> None:
        """Something changed at ``path`` (a file or a new folder): look at it soon."""
        try:
            relative = path.relative_to(self.root).as_posix()
        except ValueError:
            return
        self._pend(relative)

    def _pend(self, relative: str) -> None:
        seen = self._pending.get(relative)
        if seen is None:
            now = time.monotonic()
            self._pending[relative] = _Seen(since=now, first=now)
        else:
            seen.next_look = 0.0  # it changed: look at once
        self._look_wake.set()

    async def _rescan_forever(self) -> None:
        while not self._stopping.is_set():  # see _LOST_CANCELLATION
            await self.rescan()
            await asyncio.sleep(self.settings.rescan_interval)

    async def rescan(self, top: Path | None = None) -> None:
        """Walk the tree: finds what inotify missed, and what was written while the monitor was down.

        The guarantee under inotify: every file that is not in the journal as it is now (same size and
        modification time), and every file still waiting, is looked at again.
        """
        known = await self.journal.known()
        for relative, size, mtime_ns in await asyncio.to_thread(_walk, top or self.root, self.root):
            entry = known.get(relative)
            if entry is None or entry[:2] != (size, mtime_ns) or entry[2] is FileState.WAITING:
                self._pend(relative)

    async def _look_forever(self) -> None:
        while not self._stopping.is_set():  # see _LOST_CANCELLATION
            self._look_wake.clear()
            for signal_id, relative in await self.journal.signals_after(self._last_signal):
                self._last_signal = signal_id
                self._pend(relative)
            now = time.monotonic()
            due = [relative for relative, seen in self._pending.items() if seen.next_look <= now]
            for first in range(0, len(due), _LOOK_BATCH):
                await self.consider_many(due[first : first + _LOOK_BATCH])
            wait = _LOOK_INTERVAL if self._pending else 0.5  # signals are read from the journal twice a second
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_wake.wait(), wait)

    async def consider(self, relative: str) -> None:
        """Decide about one file (see :meth:`consider_many`)."""
        await self.consider_many([relative])

    async def consider_many(self, relatives: Sequence[str]) -> None:
        """Decide about files; whatever goes wrong with one becomes that file's recorded problem, never the loop's.

        The files are looked at in one thread hop and the ones taken are journaled in one transaction: a burst of
        files closed at once is detected in a few hops, not several hops and a commit each (each hop waits for
        the interpreter lock, which DEP's thread holds most of the time during a burst).
        """
        wanted = [r for r in relatives if r in self._pending]
        if not wanted:
            return
        looked = await asyncio.to_thread(self._look_all, wanted)
        taken: list[tuple[str, Look, str | None, bool]] = []
        for relative, outcome in zip(wanted, looked, strict=True):
            try:
                decided = await self._consider(relative, outcome)
            except Exception as exc:
                await self._could_not_look(relative, exc)
            else:
                if decided is not None:
                    taken.append(decided)
        if taken:
            try:
                await self._record_all(taken)
            except Exception as exc:
                for relative, *_ in taken:
                    await self._could_not_look(relative, exc)

    async def _could_not_look(self, relative: str, exc: Exception) -> None:
        self._pending.pop(relative, None)  # looked at again by the next rescan, which re-reads waiting files
        reason = f"could not be looked at: {exc!r}"
        log.error("file could not be looked at", path=relative, error=repr(exc), exc_info=exc)
        with contextlib.suppress(Exception):
            stat = await asyncio.to_thread(os.stat, self.root / relative)
            await self.journal.note(relative, stat.st_size, stat.st_mtime_ns, FileState.WAITING, reason)

    def _look_all(self, relatives: Sequence[str]) -> list[_Outcome]:
        """Look at each file (blocking: run it in a thread): a folder, gone, a look, a stat, or the error."""
        outcomes: list[_Outcome] = []
        for relative in relatives:
            path = self.root / relative
            try:
                if path.is_dir():
                    outcomes.append(_FOLDER)
                    continue
                match = self.instruments.match(relative)
                if match is None:
                    outcomes.append(os.stat(path))
                    continue
                rule = match.instrument.completion
                outcomes.append(look_at(path, rule.marker_suffix if rule.rule == "marker" else None))
            except (FileNotFoundError, NotADirectoryError):
                outcomes.append(_GONE)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _consider(self, relative: str, outcome: _Outcome) -> tuple[str, Look, str | None, bool] | None:
        """Decide about one file from a look at it: what to record when it is taken, else None."""
        seen = self._pending.get(relative)
        if seen is None:
            return None
        if isinstance(outcome, Exception):
            raise outcome
        path = self.root / relative
        if outcome is _FOLDER:
            # A new folder: inotify may have missed the files written into it before it was watched.
            self._pending.pop(relative, None)
            if relative not in self._folders_scanned:
                self._folders_scanned.add(relative)
                await self.rescan(path)
            return None
        if outcome is _GONE:
            self._pending.pop(relative, None)
            return None
        if isinstance(outcome, os.stat_result):
            self._pending.pop(relative, None)
            await self._not_an_instruments_file(relative, outcome)
            return None
        assert isinstance(outcome, Look)
        look = outcome
        match = self.instruments.match(relative)
        assert match is not None
        rule = match.instrument.completion
        now = time.monotonic()
        if look.stamp != seen.stamp:
            seen.stamp, seen.since = look.stamp, now
        closed_as = await self.journal.closed_as(relative) if rule.rule == "signal" else None
        decision = decide(
            rule, look, now - seen.since, closed_as=closed_as, incomplete_timeout=self.settings.incomplete_timeout
        )
        if decision.take:
            self._pending.pop(relative, None)
            return (relative, look, decision.reason, rule.rule in _EXPLICIT_RULES)
        if now - seen.first < _NOTE_WAIT_AFTER:
            # An ordinary wait (a write in progress, a marker about to come): not worth a line in the journal yet.
            seen.next_look = now + _LOOK_INTERVAL if decision.look_again else seen.first + _NOTE_WAIT_AFTER
            return None
        if not decision.look_again:
            self._pending.pop(relative, None)  # its change, its marker, its signal or the rescan brings it back
        assert decision.reason is not None
        if decision.reason != seen.noted:
            seen.noted = decision.reason
            if await self.journal.note(relative, look.size, look.mtime_ns, FileState.WAITING, decision.reason):
                log.info("file waiting", path=relative, reason=decision.reason, rule=rule.rule)
        return None

    async def _changed_after_sent(
        self, relative: str, look: Look, before: JournalEntry, *, explicit: bool
    ) -> list[ReplacedContent] | None:
        """A sent file was written again: None when there is nothing to send, else what its new content replaces.

        The same bytes again are nothing new. Other content is never a new version by itself: under a rule where
        the instrument says it finished the file (rename, marker, signal), it finished it again, and the new
        content is a new version by the instrument's word. Under a rule where the monitor judged by itself (fits,
        quiet), the file was taken before it was complete: the later, complete file replaces in the archive what
        was sent (and anything that replaced before), and the problem is recorded.
        """
        sent = Manifest.model_validate_json(before.manifest) if before.manifest else None
        sha256, _ = await asyncio.to_thread(sha256_file, self.root / relative)
        if sent is not None and sha256 == sent.sha256:
            await self.journal.restamp(relative, look.size, look.mtime_ns)
            return None
        sent_size = sent.size_bytes if sent is not None else before.size
        what = f"changed after it was sent ({sent_size} bytes sent as {before.archive_id}, {look.size} bytes now)"
        replaces: list[ReplacedContent] = []
        if explicit:
            reason = f"{what}: the instrument finished it again, so the new content is sent as a new version"
        else:
            reason = f"{what}: taken before it was complete; the complete file replaces the partial one in the archive"
            if sent is not None:
                replaces = [ReplacedContent(sha256=sent.sha256, size_bytes=sent.size_bytes), *sent.replaces]
                replaces = replaces[:_REPLACES_KEPT]
        await self.journal.remember(relative, before.state, reason)
        log.warning("file changed after it was sent", path=relative, reason=reason)
        return replaces

    async def _not_an_instruments_file(self, relative: str, stat: os.stat_result) -> None:
        data_file = self.naming.data_file_of_marker(relative)
        if data_file is not None:
            self._pend(data_file)  # its marker arrived
            return
        if self.naming.is_writers_own(relative):
            return
        reason = self.naming.why_not_taken(relative)
        if reason is None:
            return  # outside every instrument's folder: not Skyport's business
        if await self.journal.note(relative, stat.st_size, stat.st_mtime_ns, FileState.IGNORED, reason):
            log.warning("file ignored", path=relative, reason=reason)

    async def _record_all(self, taken: Sequence[tuple[str, Look, str | None, bool]]) -> None:
        """Journal the files taken (path, look, warning, explicit rule) in one transaction, and wake the work."""
        befores = await self.journal.get_many([relative for relative, *_ in taken])
        records: list[tuple[str, int, int, str | None]] = []
        looks: dict[str, Look] = {}
        for relative, look, warning, explicit in taken:
            before = befores.get(relative)
            if before is not None and before.state not in NOTED and (before.size, before.mtime_ns) == look.stamp:
                continue  # journaled as it is
            replaces: list[ReplacedContent] = []
            if before is not None and before.state in SENT:
                changed = await self._changed_after_sent(relative, look, before, explicit=explicit)
                if changed is None:
                    continue
                replaces = changed
            if warning:
                log.warning("file never looked complete, evaluating it anyway", path=relative, reason=warning)
            replaced = _REPLACES.dump_json(replaces).decode() if replaces else None
            records.append((relative, look.size, look.mtime_ns, replaced))
            looks[relative] = look
        recorded = await self.journal.record_many(records)
        now = time.time()
        for relative, look in looks.items():
            if relative in recorded:
                self.metrics.stage_seconds.labels("detect").observe(max(0.0, now - look.mtime_ns / 1e9))
                log.info("file detected", path=relative, bytes=look.size)
        if recorded:
            self._wake.set()

    # --- doing the work -----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while not self._stopping.is_set():  # see _LOST_CANCELLATION
            self._wake.clear()
            now = time.time()
            # The files under way are left out: else every file done would read the whole burst again, and the
            # earliest of them (due since they were found) would bring the loop back at once, every 10 ms.
            for entry in await self.journal.due(_WORK_STATES, now, limit=500, exclude=self._active):
                if entry.path not in self._active:
                    self._active.add(entry.path)
                    work = self._evaluate(entry) if entry.state is FileState.DETECTED else self._upload(entry)
                    self._spawn(work, entry)
            next_due = await self.journal.next_due_at(_WORK_STATES, exclude=self._active)
            wait = 1.0 if next_due is None else min(1.0, max(0.01, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _spawn(self, work: Awaitable[None], entry: JournalEntry) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:
                log.exception("unexpected error with a file", path=entry.path, state=entry.state.value)
                with contextlib.suppress(Exception):
                    await self._unexpected(entry, exc)
            finally:
                self._active.discard(entry.path)
                self._wake.set()

        task = asyncio.create_task(run())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _evaluate(self, entry: JournalEntry) -> None:
        async with self._dep:
            if self._stopping.is_set():
                return  # queued when the monitor was told to stop: the journal keeps the file for the next start
            started = time.perf_counter()
            shared = self.settings.shared_filesystem
            try:
                if self.dep_pool is not None:
                    manifest = await self.dep_pool.evaluate(self.root, entry.path, entry.size, shared=shared)
                else:
                    manifest = await asyncio.to_thread(
                        evaluate, self.instruments, self.root, entry.path, entry.size, shared=shared
                    )
            except WorkerLost as exc:
                # Whatever killed the worker may be this file (retried a few times, then invalid) or another one.
                await self._unexpected(entry, exc)
                return
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
        if entry.replaces:
            manifest = manifest.model_copy(update={"replaces": _REPLACES.validate_json(entry.replaces)})
        await self.journal.evaluated(entry, manifest.archive_id, manifest.model_dump_json())
        log.info("file evaluated", path=entry.path, archive_id=manifest.archive_id, level=manifest.level)

    async def _upload(self, entry: JournalEntry) -> None:
        assert entry.manifest is not None
        manifest = Manifest.model_validate_json(entry.manifest)
        async with self._uploads:
            if self._stopping.is_set():
                return  # queued when the monitor was told to stop: only transfers under way get the shutdown time
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

    async def _unexpected(self, entry: JournalEntry, exc: Exception) -> None:
        """An error nobody foresaw, with one file: that file's problem, retried a few times, never the monitor's."""
        if entry.attempts + 1 >= _UNEXPECTED_ATTEMPTS:
            await self.journal.invalid(entry, f"failed {entry.attempts + 1} times with an unexpected error: {exc!r}")
            self.metrics.files.labels("invalid").inc()
        else:
            await self._retry(entry, f"unexpected error: {exc!r}")

    async def _retry(self, entry: JournalEntry, reason: str, *, state: FileState | None = None) -> None:
        delay = min(self.settings.max_retry_delay, 0.5 * 2 ** min(entry.attempts, 10)) * random.uniform(0.5, 1.5)
        await self.journal.retry_later(entry, reason, delay, state=state)
        self.metrics.files.labels("retried").inc()
        log.warning("will retry", path=entry.path, reason=reason, delay=round(delay, 2), attempt=entry.attempts + 1)

    # --- following transfers ------------------------------------------------------------------------

    async def _follow(self) -> None:
        while not self._stopping.is_set():  # see _LOST_CANCELLATION
            await asyncio.sleep(self.settings.follow_interval)
            due = await self.journal.due((FileState.UPLOADED,), time.time(), limit=MAX_STATUS_QUERY)
            uploaded = {entry.transfer_id: entry for entry in due if entry.transfer_id is not None}
            if not uploaded:
                continue
            try:
                # One request for every file followed, not one each: a burst's files wait for the ingestor together.
                statuses = await self.client.statuses(list(uploaded))
            except (TransientUploadError, UploadRejected, ContentMismatch) as exc:
                log.debug("transfer states unavailable", files=len(uploaded), error=str(exc))
                continue
            for status in statuses:
                entry = uploaded.get(status.transfer_id)
                if entry is None:
                    continue
                try:
                    await self._settle_transfer(entry, status.state, status.reason)
                except Exception as exc:
                    log.error("transfer status check failed", path=entry.path, error=repr(exc))

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


def _walk(top: Path, root: Path) -> list[tuple[str, int, int]]:
    """Every file below ``top`` (hidden ones left out) as (path relative to ``root``, size, mtime_ns)."""
    found: list[tuple[str, int, int]] = []
    for directory, folders, files in os.walk(top):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(directory, name)
            try:
                stat = path.stat()
            except OSError:
                continue  # gone since it was listed
            found.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return found
