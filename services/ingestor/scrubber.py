"""The scrubber: archived files hashed again at a set pace, so that bytes gone bad in storage are found and said."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from services.ingestor.archive import ArchiveFiles
from services.ingestor.storage import ScrubCandidate

CHUNK = 4 << 20

log = structlog.get_logger("skyport.ingestor.scrubber")


class ScrubRecords(Protocol):
    """What the scrubber reads and writes: :class:`services.ingestor.storage.PostgresScrubRecords`, or a fake."""

    async def due(self, older_than: timedelta, limit: int) -> list[ScrubCandidate]: ...

    async def scrubbed(
        self, candidate: ScrubCandidate, problem: str | None, found_sha256: str | None, found_size: int | None
    ) -> bool: ...


class _Stopping(Exception):
    """The scrub of a file is abandoned: the scrubber was stopped while it read it."""


class ScrubMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.files = Counter(
            "skyport_scrub_files_total", "Archived files hashed again by the scrubber.", registry=registry
        )
        self.bytes = Counter("skyport_scrub_bytes_total", "Bytes of archived files hashed again.", registry=registry)
        self.failures = Counter(
            "skyport_scrub_failures_total",
            "Archived files whose bytes in storage are not those archived, by kind (changed, missing, unreadable).",
            ("kind",),
            registry=registry,
        )


@dataclass(frozen=True)
class Finding:
    """What the scrubber found wrong with one archived version."""

    kind: str  # changed, missing, unreadable
    problem: str  # for people
    found_sha256: str | None
    found_size: int | None


class Scrubber:
    """Hashes each archived version again once per ``interval`` seconds (a new version first one interval after it
    was archived: the receiver's hash proved it then), at no more than ``rate`` bytes per second, and records what
    does not match (``scrub_findings``, the ``skyport_scrub_failures_total`` counter, an error in the log)."""

    def __init__(
        self,
        records: ScrubRecords,
        storage: ArchiveFiles,
        metrics: ScrubMetrics,
        *,
        rate: float,
        interval: float,
        idle: float = 60.0,
        batch: int = 100,
    ) -> None:
        if rate <= 0:
            raise ValueError("the scrub rate is a number of bytes per second above 0")
        self.records = records
        self.storage = storage
        self.metrics = metrics
        self.rate = rate
        self.interval = interval
        self.idle = idle
        self.batch = batch

    async def run(self) -> None:
        """The supervised loop: scrub what is due, or wait ``idle`` seconds when nothing is."""
        while True:
            if not await self.scrub_due():
                await asyncio.sleep(self.idle)

    async def scrub_due(self) -> int:
        """Hash again up to one batch of the versions due now; returns how many were looked at."""
        candidates = await self.records.due(timedelta(seconds=self.interval), self.batch)
        findings = 0
        for candidate in candidates:
            stop = threading.Event()
            try:
                finding = await asyncio.to_thread(self._check, candidate, stop)
            finally:
                stop.set()  # cancelled (the service stops): the thread ends at its next chunk
            recorded = await self.records.scrubbed(
                candidate,
                None if finding is None else finding.problem,
                None if finding is None else finding.found_sha256,
                None if finding is None else finding.found_size,
            )
            self.metrics.files.inc()
            if finding is not None and recorded:
                findings += 1
                self.metrics.failures.labels(finding.kind).inc()
                log.error(
                    "archived file failed its scrub",
                    archive_id=candidate.archive_id,
                    version=candidate.version,
                    storage_path=candidate.storage_path,
                    kind=finding.kind,
                    problem=finding.problem,
                )
        if candidates:
            log.info("archived files scrubbed", files=len(candidates), findings=findings)
        return len(candidates)

    def _check(self, candidate: ScrubCandidate, stop: threading.Event) -> Finding | None:
        """Hash the stored file, no faster than ``rate``; None when it holds the archived bytes."""
        path = self.storage.path(candidate.storage_path)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        started = time.monotonic()
        try:
            with open(path, "rb", buffering=0) as stream:
                while count := stream.readinto(view):
                    digest.update(view[:count])
                    size += count
                    self.metrics.bytes.inc(count)
                    ahead = size / self.rate - (time.monotonic() - started)
                    if stop.wait(ahead) if ahead > 0 else stop.is_set():
                        raise _Stopping
        except FileNotFoundError:
            return Finding("missing", f"{candidate.storage_path} is not in archive storage", None, None)
        except OSError as exc:
            return Finding("unreadable", f"{candidate.storage_path} cannot be read: {exc}", None, None)
        found = digest.hexdigest()
        if (found, size) == (candidate.sha256, candidate.size_bytes):
            return None
        return Finding(
            "changed",
            f"{candidate.storage_path} holds {size} bytes with sha256 {found}; archived were "
            f"{candidate.size_bytes} bytes with sha256 {candidate.sha256}",
            found,
            size,
        )
