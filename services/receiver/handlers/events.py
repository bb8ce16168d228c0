"""What the receiver learns from the ingestor: a transfer is archived, or failed and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from services.receiver.transfers import UnitOfWork, UnknownTransfer, record_ingest_result, record_ingest_results
from skyport.bus import PermanentError
from skyport.events import CloudEvent, IngestCompleted, IngestFailed


async def on_ingest_result(unit: UnitOfWork, event: CloudEvent[Any]) -> None:
    """The ingest.completed / ingest.failed handler, in the consumer's transaction (idempotent on the event id)."""
    result = event.data
    if not isinstance(result, IngestCompleted | IngestFailed):
        raise PermanentError(f"the receiver's ingest results take no {event.type}")
    with structlog.contextvars.bound_contextvars(transfer_id=result.transfer_id, archive_id=result.archive_id):
        try:
            await record_ingest_result(unit, result)
        except UnknownTransfer as exc:
            # Retrying cannot make it known: the message goes to the dead letters with the reason.
            raise PermanentError(str(exc)) from exc


async def on_ingest_results(unit: UnitOfWork, events: Sequence[CloudEvent[Any]]) -> None:
    """The batch form of :func:`on_ingest_result`: a batch's verdicts in one statement and one transaction. Any
    trouble (an unknown transfer, another event type) fails the batch, and the bus hands its events one by one to
    :func:`on_ingest_result`, which sends the bad one to the dead letters with its reason."""
    results = [event.data for event in events]
    if not all(isinstance(result, IngestCompleted | IngestFailed) for result in results):
        raise PermanentError("the receiver's ingest results take only ingest.completed and ingest.failed")
    await record_ingest_results(unit, results)
