"""The receiver's ingest-result consumer, wired as the service wires it, on a fake database (no servers)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.receiver.app import ingest_results_subscription
from services.receiver.storage import Transfer
from services.receiver.transfers import UnknownTransfer
from skyport.bus import PermanentError
from skyport.events import CloudEvent, IngestCompleted, IngestFailed
from skyport.transfer import Manifest, TransferState
from tests.unit.receiver.fakes import FakeReceiverDatabase

CONTENT = b"SIMPLE  =                    T" * 100


async def received_transfer(db: FakeReceiverDatabase, archive_id: str = "HI.20260315.12345") -> Transfer:
    manifest = Manifest(
        archive_id=archive_id,
        original_filename="hires0001.fits",
        size_bytes=len(CONTENT),
        sha256=hashlib.sha256(CONTENT).hexdigest(),
        mission="KECK",
        instrument="HIRES",
        level="raw",
        propid="2026A_U123",
        written_at=datetime(2026, 3, 15, 10, tzinfo=UTC),
    )
    async with db.transaction() as unit:
        transfer, _ = await unit.transfers.create("keck", manifest)
        await unit.transfers.set_state(transfer.transfer_id, TransferState.RECEIVED, staged_path="ab/abc")
    return db.transfer(transfer.transfer_id)


async def test_an_archived_transfer_says_its_version_to_the_monitor() -> None:
    db = FakeReceiverDatabase()
    transfer = await received_transfer(db)
    handle = ingest_results_subscription(db).handler
    event = CloudEvent.create(
        IngestCompleted(transfer_id=transfer.transfer_id, archive_id="HI.20260315.12345", version=2, duplicate=True),
        source="/test",
    )

    await handle(event)

    ingested = db.transfer(transfer.transfer_id)
    assert (ingested.state, ingested.version, ingested.duplicate) == (TransferState.INGESTED, 2, True)
    assert ingested.staged_path == "ab/abc"
    assert ingested.status().version == 2


async def test_a_failed_transfer_says_why_and_a_redelivered_verdict_changes_nothing() -> None:
    db = FakeReceiverDatabase()
    transfer = await received_transfer(db)
    handle = ingest_results_subscription(db).handler
    failed = CloudEvent.create(
        IngestFailed(transfer_id=transfer.transfer_id, archive_id="HI.20260315.12345", reason="not a FITS file"),
        source="/test",
    )
    await handle(failed)
    assert (db.transfer(transfer.transfer_id).state, db.transfer(transfer.transfer_id).reason) == (
        TransferState.FAILED,
        "not a FITS file",
    )

    # The same event again (a redelivery) after the state moved on is recognised by its id and skipped.
    async with db.transaction() as unit:
        await unit.transfers.set_state(transfer.transfer_id, TransferState.INGESTED, version=1)
    await handle(failed)
    assert db.transfer(transfer.transfer_id).state is TransferState.INGESTED


async def test_a_verdict_on_a_transfer_never_received_here_is_a_dead_letter() -> None:
    db = FakeReceiverDatabase()
    handle = ingest_results_subscription(db).handler
    event = CloudEvent.create(
        IngestCompleted(transfer_id="5b0c2d0e-0000-4000-8000-000000000000", archive_id="HI.1", version=1),
        source="/test",
    )
    with pytest.raises(PermanentError, match="no transfer"):
        await handle(event)
    assert db.tables.handled == set()  # rolled back with the rest: a replay after a fix is handled


async def test_a_burst_of_verdicts_is_recorded_in_one_transaction_or_else_one_by_one() -> None:
    db = FakeReceiverDatabase()
    first, second = await received_transfer(db), await received_transfer(db, "HI.20260315.12346")
    subscription = ingest_results_subscription(db)
    assert subscription.batching is not None

    def completed(transfer_id: str, version: int) -> CloudEvent[IngestCompleted]:
        return CloudEvent.create(
            IngestCompleted(transfer_id=transfer_id, archive_id="HI.20260315.12345", version=version), source="/test"
        )

    await subscription.batching.handler([completed(first.transfer_id, 1), completed(second.transfer_id, 3)])
    assert [(db.transfer(t.transfer_id).state, db.transfer(t.transfer_id).version) for t in (first, second)] == [
        (TransferState.INGESTED, 1),
        (TransferState.INGESTED, 3),
    ]

    # A batch holding a verdict on an unknown transfer leaves no trace, so the bus can hand its events one by one
    # to the subscription's handler: the good one is recorded, the unknown one goes to the dead letters.
    third = await received_transfer(db, "HI.20260315.12347")
    good, unknown = completed(third.transfer_id, 1), completed("5b0c2d0e-0000-4000-8000-000000000000", 1)
    with pytest.raises(UnknownTransfer):
        await subscription.batching.handler([good, unknown])
    assert db.transfer(third.transfer_id).state is TransferState.RECEIVED
    await subscription.handler(good)
    with pytest.raises(PermanentError, match="no transfer"):
        await subscription.handler(unknown)
    assert db.transfer(third.transfer_id).state is TransferState.INGESTED
