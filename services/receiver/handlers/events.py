"""What the receiver learns from the ingestor: a transfer is archived, or failed and why."""

from __future__ import annotations

from typing import Any

import structlog

from services.receiver.transfers import UnitOfWork, UnknownTransfer, record_ingest_result
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
