"""Idempotent consumers: the event id is recorded in the same transaction as the handler's effects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import structlog

from skyport.bus import Handler
from skyport.db.pool import Database
from skyport.events import CloudEvent

TransactionalHandler = Callable[[asyncpg.Connection, CloudEvent[Any]], Awaitable[None]]

log = structlog.get_logger("skyport.idempotency")


async def claim_event(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """Record that ``consumer`` handles ``event_id`` now; False if it already did.

    Call it inside the handler's transaction: if the transaction rolls back, the claim goes with it. A
    concurrent duplicate waits on the row lock and then sees the committed claim.
    """
    claimed = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(claimed)


def idempotent(db: Database, consumer: str, handler: TransactionalHandler) -> Handler:
    """Wrap a handler so each event id changes the database once, however often it is delivered.

    The wrapped handler gets a connection inside an open transaction; it must not commit. Its effects,
    the claim on the event id, and any events it puts in the outbox commit together, then the bus acks.
    """

    async def handle(event: CloudEvent[Any]) -> None:
        async with db.transaction() as conn:
            if not await claim_event(conn, consumer, event.id):
                log.info("event already handled, skipped", consumer=consumer)
                return
            await handler(conn, event)

    return handle


async def forget_processed_events(conn: asyncpg.Connection, older_than: timedelta) -> int:
    """Delete claims older than any redelivery can be (the broker's and the outbox's retention)."""
    result: str = await conn.execute(
        "DELETE FROM processed_events WHERE processed_at < now() - $1::interval", older_than
    )
    return int(result.split()[-1])
