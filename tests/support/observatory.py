"""A monitor running in the test's own event loop, against a fake archive: the observatory side alone."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.monitor.journal import Journal, JournalEntry
from services.monitor.monitor import Monitor, MonitorMetrics
from services.monitor.settings import MonitorSettings
from skyport.instruments import load_instruments
from skyport.transfer import Manifest, TransferState, TransferStatus
from tests.support.flow import INSTRUMENTS


@dataclass
class Sent:
    manifest: Manifest
    sha256: str  # of the bytes the monitor streamed
    version: int


@dataclass
class FakeArchive:
    """Takes every upload at once, as the ingestor does: a new content under an archive ID is a new version, unless
    it replaces the latest version's content (``Manifest.replaces``): then it takes that version's place."""

    sent: list[Sent] = field(default_factory=list)
    replaced: list[Sent] = field(default_factory=list)
    transfers: dict[str, TransferStatus] = field(default_factory=dict)

    async def send(self, manifest: Manifest, path: Path) -> TransferStatus:
        digest = hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()
        versions = [s for s in self.sent if s.manifest.archive_id == manifest.archive_id]
        same = next((s for s in versions if s.sha256 == digest), None)
        replaces = {(r.sha256, r.size_bytes) for r in manifest.replaces}
        partial = (
            versions[-1] if versions and (versions[-1].sha256, versions[-1].manifest.size_bytes) in replaces else None
        )
        if same is not None:
            version = same.version
        elif partial is not None:
            version = partial.version
            self.replaced.append(partial)
            self.sent[self.sent.index(partial)] = Sent(manifest, digest, version)
        else:
            version = len(versions) + 1
            self.sent.append(Sent(manifest, digest, version))
        status = self._status(manifest, TransferState.INGESTED, version)
        self.transfers[status.transfer_id] = status
        return status

    async def status(self, transfer_id: str) -> TransferStatus:
        return self.transfers[transfer_id]

    async def statuses(self, transfer_ids: Sequence[str]) -> list[TransferStatus]:
        return [self.transfers[t] for t in transfer_ids if t in self.transfers]

    def versions(self, archive_id: str) -> list[Sent]:
        return [s for s in self.sent if s.manifest.archive_id == archive_id]

    @staticmethod
    def _status(manifest: Manifest, state: TransferState, version: int) -> TransferStatus:
        return TransferStatus(
            transfer_id=uuid.uuid4().hex,
            state=state,
            archive_id=manifest.archive_id,
            sha256=manifest.sha256,
            version=version,
            updated_at=datetime.now(UTC),
        )


@dataclass
class Observatory:
    root: Path
    journal_path: Path
    instruments_dir: Path
    monitor: Monitor
    journal: Journal
    archive: FakeArchive

    async def entry(self, relative: str) -> JournalEntry | None:
        return await self.journal.get(relative)


def instruments_with(tmp_path: Path, instrument: str, completion: str) -> Path:
    """A copy of the shipped instrument configuration whose ``instrument`` has another [completion] table."""
    target = tmp_path / "instruments"
    shutil.copytree(INSTRUMENTS, target)
    (path,) = target.glob(f"*/{instrument.lower()}.toml")
    text = path.read_text()
    replaced, count = re.subn(r"(?ms)^\[completion\]\n.*?(?=^\[)", completion.strip() + "\n\n", text)
    assert count == 1, f"{path} has no [completion] table"
    path.write_text(replaced)
    return target


@asynccontextmanager
async def observatory(
    tmp_path: Path, instruments_dir: Path = INSTRUMENTS, **settings: object
) -> AsyncIterator[Observatory]:
    root = tmp_path / "observatory"
    journal_path = tmp_path / "monitor" / "journal.sqlite3"
    values: dict[str, object] = {
        "watch_root": root,
        "journal_path": journal_path,
        "instruments_dir": instruments_dir,
        "rescan_interval": 2.0,
        "follow_interval": 0.2,
        "max_retry_delay": 1.0,
        "receiver_url": "http://archive.invalid",  # the fake archive takes the files; nothing is sent
        "site_token": "observatory-test",
        **settings,
    }
    monitor_settings = MonitorSettings(**values)  # type: ignore[arg-type]
    journal = await Journal.open(journal_path)
    archive = FakeArchive()
    monitor = Monitor(
        monitor_settings,
        load_instruments(instruments_dir),
        journal,
        archive,  # type: ignore[arg-type]
        MonitorMetrics(CollectorRegistry()),
    )
    await monitor.start()
    try:
        yield Observatory(root, journal_path, instruments_dir, monitor, journal, archive)
    finally:
        await monitor.stop(1)
        await journal.close()
