"""What the receiver learns from the ingestor: a transfer is archived, or failed and why."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.receiver.storage import TransferStore
from skyport.bus import PermanentError
from skyport.events import CloudEvent, IngestCompleted, IngestFailed
from skyport.transfer import TransferState


async def on_ingest_result(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
    """Record the ingestor's verdict on the transfer, for the monitor that follows it."""
    store = TransferStore(conn)
    data = event.data
    if await store.get(data.transfer_id) is None:
        raise PermanentError(f"no transfer {data.transfer_id!r} was received here")
    if isinstance(data, IngestCompleted):
        await store.set_state(data.transfer_id, TransferState.INGESTED, version=data.version, duplicate=data.duplicate)
    elif isinstance(data, IngestFailed):
        await store.set_state(data.transfer_id, TransferState.FAILED, reason=data.reason)
