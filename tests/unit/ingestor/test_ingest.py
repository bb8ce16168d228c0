"""The ingestor wired as the service wires it, on a fake database and the in-process bus: a staged file becomes an
archived version, or is recognised as one archived already, or is refused with the reason (no servers)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits

from services.ingestor.app import transfer_received_subscription
from services.ingestor.archive import ArchiveFiles
from services.ingestor.ingest import Ingestor
from services.monitor.dep import evaluate
from skyport.bus.memory import MemoryBus
from skyport.events import (
    CloudEvent,
    FileArchived,
    IngestCompleted,
    IngestFailed,
    ReplacedContent,
    TransferReceived,
)
from skyport.instruments import load_instruments
from skyport.simulator import Simulator
from skyport.transfer import Manifest
from tests.support.flow import INSTRUMENTS
from tests.support.transfers import transfer_received
from tests.support.waiting import eventually
from tests.unit.ingestor.fakes import FakeIngestorDatabase, FakeVersions


class Archive:
    """An observatory folder whose files are evaluated as the monitor does, staged as the receiver does, and
    announced on the bus to the ingestor."""

    def __init__(self, tmp_path: Path, bus: MemoryBus) -> None:
        self.instruments = load_instruments(INSTRUMENTS)
        self.root, self.staging = tmp_path / "observatory", tmp_path / "staging"
        self.storage = ArchiveFiles(tmp_path / "archive")
        self.ingestor = Ingestor(self.staging, self.storage, self.instruments)
        self.db = FakeIngestorDatabase()
        self.bus = bus

    def new_file(self, seed: int = 11) -> str:
        simulator = Simulator(self.instruments, self.root, seed=seed)
        return simulator.write_file("HIRES", size_bytes=100_000).relative_path

    def complete(self, relative: str) -> None:
        """Change the file as an instrument still writing it would: the content sent before was partial."""
        with fits.open(self.root / relative, mode="update") as hdul:
            hdul[0].header["HISTORY"] = "the rest of the file"
            hdul[0].add_checksum()

    def manifest(self, relative: str, replaces: Sequence[Manifest] = ()) -> tuple[Manifest, bytes]:
        path = self.root / relative
        manifest = evaluate(self.instruments, self.root, relative, path.stat().st_size, shared=False)
        earlier = [ReplacedContent(sha256=m.sha256, size_bytes=m.size_bytes) for m in replaces]
        return manifest.model_copy(update={"replaces": earlier}), path.read_bytes()

    def received(self, manifest: Manifest, content: bytes) -> CloudEvent[TransferReceived]:
        """The receiver's part: the bytes staged under a new transfer's id, and its transfer.received."""
        transfer_id = str(uuid.uuid4())
        staged_path = f"{transfer_id[:2]}/{transfer_id}"
        (self.staging / staged_path).parent.mkdir(parents=True, exist_ok=True)
        (self.staging / staged_path).write_bytes(content)
        data = transfer_received(manifest, transfer_id, staged_path, site="keck")
        return CloudEvent.create(data, source="/skyport/receiver", correlation_id=transfer_id)

    async def send(self, manifest: Manifest, content: bytes) -> IngestCompleted | IngestFailed:
        """Publish the file's transfer.received, and wait for the ingestor's verdict on it."""
        event = self.received(manifest, content)
        await self.bus.publish(event)
        await eventually(lambda: self.verdict(event.data.transfer_id) is not None, what="the ingestor's verdict")
        verdict = self.verdict(event.data.transfer_id)
        assert verdict is not None
        return verdict

    def verdict(self, transfer_id: str) -> IngestCompleted | IngestFailed | None:
        for event in self.db.outbox:
            if isinstance(event.data, IngestCompleted | IngestFailed) and event.data.transfer_id == transfer_id:
                return event.data
        return None

    def archived(self) -> list[tuple[int, str]]:
        return [(v.version, v.sha256) for versions in self.db.tables.versions.values() for v in versions]

    def announced(self) -> list[FileArchived]:
        return [event.data for event in self.db.outbox if isinstance(event.data, FileArchived)]

    def stored(self) -> list[bytes]:
        return [p.read_bytes() for p in self.storage.root.rglob("*") if p.is_file()]

    def staged(self) -> list[Path]:
        return [p for p in self.staging.rglob("*") if p.is_file()]


@pytest.fixture
async def archive(tmp_path: Path, unique: str) -> AsyncIterator[Archive]:
    bus = MemoryBus(f"memory://ingestor-{unique}")
    await bus.start()
    archive = Archive(tmp_path, bus)
    await bus.subscribe(transfer_received_subscription(archive.db, archive.ingestor, prefetch=2))
    try:
        yield archive
    finally:
        await bus.close()


def completed(verdict: Any) -> tuple[int, bool]:
    assert isinstance(verdict, IngestCompleted), verdict
    return verdict.version, verdict.duplicate


async def test_a_new_file_is_archived_as_its_first_version_and_announced(archive: Archive) -> None:
    manifest, content = archive.manifest(archive.new_file())

    verdict = await archive.send(manifest, content)

    assert completed(verdict) == (1, False)
    assert archive.archived() == [(1, manifest.sha256)]
    (announced,) = archive.announced()
    assert (announced.archive_id, announced.version, announced.replaces) == (manifest.archive_id, 1, None)
    assert archive.storage.path(announced.storage_path).read_bytes() == content
    assert archive.staged() == []  # moved, not copied


async def test_the_same_content_again_is_recognised_and_not_stored_twice(archive: Archive) -> None:
    manifest, content = archive.manifest(archive.new_file())
    await archive.send(manifest, content)

    verdict = await archive.send(manifest, content)  # sent again: a new transfer of the same bytes

    assert completed(verdict) == (1, True)
    assert archive.archived() == [(1, manifest.sha256)]
    assert len(archive.announced()) == 1
    assert archive.stored() == [content]
    assert archive.staged() == []


async def test_a_complete_file_replaces_the_partial_one_in_its_version(archive: Archive) -> None:
    relative = archive.new_file()
    partial, partial_bytes = archive.manifest(relative)
    await archive.send(partial, partial_bytes)
    archive.complete(relative)
    whole, whole_bytes = archive.manifest(relative, [partial])

    assert completed(await archive.send(whole, whole_bytes)) == (1, False)

    assert archive.archived() == [(1, whole.sha256)]
    assert archive.stored() == [whole_bytes]
    assert [(e.version, e.sha256, e.replaces) for e in archive.announced()] == [
        (1, partial.sha256, None),
        (1, whole.sha256, ReplacedContent(sha256=partial.sha256, size_bytes=partial.size_bytes)),
    ]


async def test_a_partial_file_arriving_after_the_complete_one_is_never_archived(archive: Archive) -> None:
    relative = archive.new_file()
    partial, partial_bytes = archive.manifest(relative)
    archive.complete(relative)
    whole, whole_bytes = archive.manifest(relative, [partial])
    await archive.send(whole, whole_bytes)  # the complete file's transfer overtook the partial one's

    verdict = await archive.send(partial, partial_bytes)

    assert completed(verdict) == (1, True)  # acknowledged as the version holding the complete file
    assert archive.archived() == [(1, whole.sha256)]
    assert archive.stored() == [whole_bytes]
    assert [e.replaces for e in archive.announced()] == [None]
    assert archive.staged() == []


async def test_bytes_that_are_not_the_manifest_s_are_refused_and_set_aside(archive: Archive) -> None:
    manifest, content = archive.manifest(archive.new_file())

    # The receiver proved the staged bytes' sha256 as it wrote them; the ingestor checks their size and header.
    verdict = await archive.send(manifest, content[:-1])

    assert isinstance(verdict, IngestFailed)
    assert "the manifest says" in verdict.reason
    assert archive.archived() == []
    assert archive.announced() == []
    assert [p.parent.name for p in archive.staged()] == [".rejected"]  # kept for inspection


async def test_a_staged_file_linked_from_elsewhere_is_hashed_again(archive: Archive, tmp_path: Path) -> None:
    """Shared-filesystem mode links the observatory's file into staging: whoever holds that inode may have changed
    its bytes since the receiver hashed them, so the ingestor hashes them again and refuses other bytes."""
    manifest, content = archive.manifest(archive.new_file())
    event = archive.received(manifest, content)
    staged = archive.staging / event.data.staged_path
    outside = tmp_path / "observatory-copy"
    outside.hardlink_to(staged)
    with outside.open("r+b") as changed:  # the same size, one byte changed, after the receiver's check
        changed.seek(len(content) // 2)
        changed.write(bytes([content[len(content) // 2] ^ 0xFF]))
    await archive.bus.publish(event)
    await eventually(lambda: archive.verdict(event.data.transfer_id) is not None, what="the ingestor's verdict")

    verdict = archive.verdict(event.data.transfer_id)
    assert isinstance(verdict, IngestFailed)
    assert "the manifest says" in verdict.reason
    assert archive.archived() == []


async def test_a_redelivered_event_is_ingested_once(archive: Archive) -> None:
    manifest, content = archive.manifest(archive.new_file())
    event = archive.received(manifest, content)
    handle = transfer_received_subscription(archive.db, archive.ingestor, prefetch=1).handler

    await handle(event)
    await handle(event)  # the broker's at-least-once: the same event id again

    assert archive.archived() == [(1, manifest.sha256)]
    assert [type(e.data) for e in archive.db.outbox] == [FileArchived, IngestCompleted]


async def test_a_burst_is_ingested_in_batches_with_the_verdicts_of_one_by_one(tmp_path: Path, unique: str) -> None:
    bus = MemoryBus(f"memory://ingestor-batches-{unique}")
    await bus.start()
    archive = Archive(tmp_path, bus)
    subscription = transfer_received_subscription(archive.db, archive.ingestor, prefetch=1, batch_size=10)
    try:
        files = [archive.manifest(archive.new_file(seed)) for seed in (21, 22, 23, 24)]
        (bad, bad_content), *good = files
        events = [archive.received(manifest, content) for manifest, content in good]
        events.append(archive.received(*good[0]))  # the same file again: a duplicate in the same batch
        events.append(archive.received(bad, bad_content[:-1]))  # refused: its verdict says why, the rest go on
        assert subscription.batching is not None
        await subscription.batching.handler(events)
    finally:
        await bus.close()

    verdicts = [archive.verdict(event.data.transfer_id) for event in events]
    assert [completed(v) for v in verdicts[:4]] == [(1, False), (1, False), (1, False), (1, True)]
    assert isinstance(verdicts[4], IngestFailed)
    assert sorted(archive.archived()) == sorted((1, manifest.sha256) for manifest, _ in good)
    assert len(archive.stored()) == 3


async def test_a_file_moved_in_by_an_attempt_that_died_before_its_commit_is_archived_once(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, content = archive.manifest(archive.new_file())
    event = archive.received(manifest, content)
    handle = transfer_received_subscription(archive.db, archive.ingestor, prefetch=1).handler

    async def dying(self: FakeVersions, **fields: Any) -> None:
        raise ConnectionError("the database went away before the commit")

    with monkeypatch.context() as patched:
        patched.setattr(FakeVersions, "add", dying)
        with pytest.raises(ConnectionError):
            await handle(event)
    assert (archive.archived(), archive.staged(), archive.stored()) == ([], [], [content])  # moved, not recorded

    await handle(event)  # the broker's redelivery: the file is found in storage and verified there

    assert archive.archived() == [(1, manifest.sha256)]
    assert archive.stored() == [content]
    assert [type(e.data) for e in archive.db.outbox] == [FileArchived, IngestCompleted]


async def test_a_file_linked_into_storage_by_an_attempt_killed_before_it_let_go_of_the_staged_name_is_archived(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, content = archive.manifest(archive.new_file())
    event = archive.received(manifest, content)
    handle = transfer_received_subscription(archive.db, archive.ingestor, prefetch=1).handler

    def killed(self: ArchiveFiles, relative: str, size_bytes: int, sha256: str | None) -> None:
        raise ConnectionError("the process died between its link into storage and the staged name's unlink")

    with monkeypatch.context() as patched:
        patched.setattr(ArchiveFiles, "verify", killed)
        with pytest.raises(ConnectionError):
            await handle(event)
    staged, stored = archive.staged(), archive.stored()
    assert stored == [content]
    assert [p.stat().st_nlink for p in staged] == [2]  # one inode, two names

    await handle(event)  # the broker's redelivery: the link is the attempt's own, not an archived version

    assert archive.archived() == [(1, manifest.sha256)]
    assert (archive.staged(), archive.stored()) == ([], [content])
    assert [type(e.data) for e in archive.db.outbox] == [FileArchived, IngestCompleted]
