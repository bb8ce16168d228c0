"""The transfer.received consumer: hand each staged file to the ingestor, in the consumer's transaction."""

from __future__ import annotations

from typing import Any

import structlog

from services.ingestor.ingest import EventHandler, Ingestor, UnitOfWork
from skyport.bus import PermanentError
from skyport.events import CloudEvent, TransferReceived


def on_transfer_received(ingestor: Ingestor) -> EventHandler:
    """The handler to give ``IngestorDatabase.consumer``: it commits the unit of work, then the bus acks."""

    async def ingest(unit: UnitOfWork, event: CloudEvent[Any]) -> None:
        received = event.data
        if not isinstance(received, TransferReceived):
            raise PermanentError(f"the ingestor takes transfer.received, not {event.type}")
        # The bus has bound the event and correlation ids; these say which file the log lines are about.
        with structlog.contextvars.bound_contextvars(transfer_id=received.transfer_id, archive_id=received.archive_id):
            await ingestor.ingest(unit, received, event.correlationid)

    return ingest
