"""The receiver's transfer workflow against a fake database: staged, verified, recorded and announced, or refused
with the code a monitor decides on and nothing left behind (no servers)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.receiver.app import transfer_service
from services.receiver.handlers.http import refusal
from services.receiver.settings import ReceiverSettings
from services.receiver.transfers import (
    WRITEBACK_BYTES,
    BadChecksum,
    Busy,
    NoSuchTransfer,
    SizeMismatch,
    TooLarge,
    TransferService,
)
from skyport.api.errors import ErrorCode
from skyport.events import ReplacedContent, TransferReceived
from skyport.transfer import Manifest, TransferState
from tests.unit.receiver.fakes import FakeReceiverDatabase

PARTIAL = b"SIMPLE  =                    T" * 100
COMPLETE = PARTIAL + b"the rest of the file" * 10


def manifest(content: bytes, **changes: object) -> Manifest:
    return Manifest(
        archive_id="HI.20260315.12345",
        original_filename="hires0001.fits",
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        mission="KECK",
        instrument="HIRES",
        level="raw",
        propid="2026A_U123",
        written_at=datetime(2026, 3, 15, 10, tzinfo=UTC),
        **changes,
    )


async def chunks(content: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("the bytes of a transfer received already were read again")
    yield b""  # pragma: no cover  (makes this an async generator)


class Receiver:
    """The workflow wired as the service wires it, on a fake database and a staging folder of the test's own."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.db = FakeReceiverDatabase()
        self.staging = tmp_path / "staging"
        self.transfers: TransferService = transfer_service(
            self.db, ReceiverSettings(staging_dir=self.staging, **settings), CollectorRegistry()
        )
        self.transfers.staging.prepare()
        self.site = "keck"
        self.token = self.db.add_site(self.site)

    def announced(self) -> list[TransferReceived]:
        return [event.data for event in self.db.outbox if isinstance(event.data, TransferReceived)]

    def staged_files(self) -> list[Path]:
        return sorted(p for p in self.staging.rglob("*") if p.is_file())


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    return Receiver(tmp_path)


def refused_as(exc: Exception) -> tuple[int, ErrorCode]:
    answer = refusal(exc)
    assert answer is not None, f"{exc!r} would be a server error"
    return answer.status, answer.code


async def test_a_good_transfer_is_staged_durably_and_announced_once(receiver: Receiver) -> None:
    assert await receiver.transfers.site_for(receiver.token) == "keck"
    transfer, created = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    assert created
    assert transfer.state is TransferState.CREATED

    received = await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(COMPLETE), len(COMPLETE))

    assert received.state is TransferState.RECEIVED
    (staged,) = receiver.staged_files()  # nothing left in the incoming folder
    assert staged.read_bytes() == COMPLETE
    assert staged.relative_to(receiver.staging).as_posix() == received.staged_path
    (announced,) = receiver.announced()
    assert (announced.transfer_id, announced.staged_path) == (transfer.transfer_id, received.staged_path)
    assert (announced.sha256, announced.size_bytes) == (hashlib.sha256(COMPLETE).hexdigest(), len(COMPLETE))
    assert receiver.db.outbox[0].correlationid == transfer.transfer_id


@pytest.mark.parametrize("piece", [1, 65_521, 1 << 20], ids=lambda n: f"pieces of {n} bytes")
async def test_a_big_file_is_staged_whole_whatever_pieces_it_comes_in(receiver: Receiver, piece: int) -> None:
    # Beyond WRITEBACK_BYTES, so that the kernel is asked to write parts of it before the end.
    content = os.urandom(2 * WRITEBACK_BYTES + 12_345) if piece > 1 else os.urandom(3 * 4096 + 5)
    transfer, _ = await receiver.transfers.create(receiver.site, manifest(content))

    received = await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(content, piece), None)

    assert received.state is TransferState.RECEIVED
    (staged,) = receiver.staged_files()
    assert staged.read_bytes() == content


async def test_bytes_that_are_not_the_manifest_s_are_refused_as_a_checksum_mismatch(receiver: Receiver) -> None:
    transfer, _ = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    corrupted = COMPLETE[:-1] + b"X"

    with pytest.raises(BadChecksum) as refused:
        await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(corrupted), len(corrupted))

    assert refused_as(refused.value) == (422, ErrorCode.CHECKSUM_MISMATCH)
    assert receiver.staged_files() == []
    assert receiver.announced() == []
    assert receiver.db.transfer(transfer.transfer_id).state is TransferState.CREATED
    # The site sends the right bytes again: received.
    received = await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(COMPLETE), None)
    assert received.state is TransferState.RECEIVED


async def test_an_upload_of_another_size_than_the_manifest_s_is_refused(receiver: Receiver) -> None:
    transfer, _ = await receiver.transfers.create(receiver.site, manifest(COMPLETE))

    with pytest.raises(SizeMismatch) as declared:
        await receiver.transfers.upload(receiver.site, transfer.transfer_id, never_read(), len(COMPLETE) - 1)
    assert refused_as(declared.value) == (422, ErrorCode.SIZE_MISMATCH)

    # Without a Content-Length (chunked), the bytes beyond the manifest's size are refused as they come.
    with pytest.raises(TooLarge) as streamed:
        await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(COMPLETE + b"more"), None)
    assert refused_as(streamed.value) == (413, ErrorCode.PAYLOAD_TOO_LARGE)

    # Fewer bytes than the manifest's: not the file it describes.
    with pytest.raises(BadChecksum):
        await receiver.transfers.upload(receiver.site, transfer.transfer_id, chunks(COMPLETE[:-10]), None)
    assert receiver.staged_files() == []
    assert receiver.announced() == []


async def test_a_file_larger_than_the_receiver_takes_is_refused_at_its_manifest(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, max_upload_bytes=len(COMPLETE) - 1)
    with pytest.raises(TooLarge) as refused:
        await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    assert refused_as(refused.value) == (413, ErrorCode.PAYLOAD_TOO_LARGE)
    assert receiver.db.tables.transfers == {}


async def test_a_repeated_transfer_is_the_same_transfer_received_once(receiver: Receiver) -> None:
    first, created = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    again, created_again = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    assert (created, created_again) == (True, False)
    assert again.transfer_id == first.transfer_id

    await receiver.transfers.upload(receiver.site, first.transfer_id, chunks(COMPLETE), len(COMPLETE))
    # A retry after a lost answer: the same answer, the bytes not read again, nothing announced twice.
    retried = await receiver.transfers.upload(receiver.site, first.transfer_id, never_read(), len(COMPLETE))

    assert retried.state is TransferState.RECEIVED
    assert len(receiver.announced()) == 1
    assert len(receiver.staged_files()) == 1


async def test_a_complete_file_replacing_a_partial_one_says_what_it_replaces(receiver: Receiver) -> None:
    partial, _ = await receiver.transfers.create(receiver.site, manifest(PARTIAL))
    await receiver.transfers.upload(receiver.site, partial.transfer_id, chunks(PARTIAL), len(PARTIAL))
    sent_before = ReplacedContent(sha256=hashlib.sha256(PARTIAL).hexdigest(), size_bytes=len(PARTIAL))

    complete, created = await receiver.transfers.create(receiver.site, manifest(COMPLETE, replaces=[sent_before]))
    await receiver.transfers.upload(receiver.site, complete.transfer_id, chunks(COMPLETE), len(COMPLETE))

    assert created  # new content is a transfer of its own
    assert complete.transfer_id != partial.transfer_id
    first, second = receiver.announced()
    assert (first.sha256, first.replaces) == (sent_before.sha256, [])
    assert (second.sha256, second.replaces) == (hashlib.sha256(COMPLETE).hexdigest(), [sent_before])
    assert sorted(p.read_bytes() for p in receiver.staged_files()) == sorted([PARTIAL, COMPLETE])


async def test_a_site_sees_its_own_transfers_only(receiver: Receiver) -> None:
    transfer, _ = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    assert await receiver.transfers.site_for("not a credential") is None
    for site, transfer_id in (("subaru", transfer.transfer_id), ("keck", "not-a-uuid")):
        with pytest.raises(NoSuchTransfer) as refused:
            await receiver.transfers.get(site, transfer_id)
        assert refused_as(refused.value) == (404, ErrorCode.NOT_FOUND)
        with pytest.raises(NoSuchTransfer):
            await receiver.transfers.status(site, transfer_id)
    # Asked in one question, another site's transfer and an id of none are left out of the answer.
    other, _ = await receiver.transfers.create("subaru", manifest(PARTIAL))
    asked = [transfer.transfer_id, other.transfer_id, "not-a-uuid", str(uuid.uuid4())]
    (found,) = await receiver.transfers.statuses("keck", asked)
    assert (found.transfer_id, found.state, found.sha256) == (
        transfer.transfer_id,
        TransferState.CREATED,
        transfer.manifest.sha256,
    )
    assert await receiver.transfers.status("keck", transfer.transfer_id) == found


async def test_uploads_beyond_the_limit_are_told_to_retry(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path, max_concurrent_uploads=1)
    first, _ = await receiver.transfers.create(receiver.site, manifest(PARTIAL))
    second, _ = await receiver.transfers.create(receiver.site, manifest(COMPLETE))
    refused_meanwhile = []

    async def slow_upload() -> AsyncIterator[bytes]:
        yield PARTIAL[:10]
        # While the first upload holds the only place, the second is refused.
        with pytest.raises(Busy) as refused:
            await receiver.transfers.upload(receiver.site, second.transfer_id, never_read(), len(COMPLETE))
        answer = refusal(refused.value)
        assert answer is not None
        refused_meanwhile.append((answer.status, answer.code, answer.headers))
        yield PARTIAL[10:]

    await receiver.transfers.upload(receiver.site, first.transfer_id, slow_upload(), len(PARTIAL))
    assert refused_meanwhile == [(503, ErrorCode.BUSY, {"Retry-After": "1"})]
    received = await receiver.transfers.upload(receiver.site, second.transfer_id, chunks(COMPLETE), None)
    assert received.state is TransferState.RECEIVED
