"""The transfer.received consumer: hand each staged file to the ingestor, in the consumer's transaction (one per
event, or one per batch of events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from services.ingestor.ingest import BatchEventHandler, EventHandler, Ingestor, UnitOfWork
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


def on_transfers_received(ingestor: Ingestor) -> BatchEventHandler:
    """The handler to give ``IngestorDatabase.batch_consumer``: a batch of files in one transaction, one commit.

    The files are taken in archive ID order (each archive ID's own events in the order they came), so that two
    batches lock archive IDs in the same order and never wait for each other in a circle. Anything raised fails
    the whole batch, which leaves no trace in the database; the bus then hands its events one by one to
    :func:`on_transfer_received` (a file moved into storage by the failed batch is found there and verified).
    """
    one = on_transfer_received(ingestor)

    async def ingest(unit: UnitOfWork, events: Sequence[CloudEvent[Any]]) -> None:
        for event in sorted(events, key=lambda e: getattr(e.data, "archive_id", "")):
            with structlog.contextvars.bound_contextvars(event_id=event.id, correlation_id=event.correlationid):
                await one(unit, event)

    return ingest
