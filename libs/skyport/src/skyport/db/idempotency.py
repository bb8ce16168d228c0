"""Idempotent consumers: the event id is recorded in the same transaction as the handler's effects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import structlog

from skyport.bus import BatchHandler, Handler
from skyport.db.pool import Database
from skyport.events import CloudEvent

TransactionalHandler = Callable[[asyncpg.Connection, CloudEvent[Any]], Awaitable[None]]
TransactionalBatchHandler = Callable[[asyncpg.Connection, Sequence[CloudEvent[Any]]], Awaitable[None]]

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


async def claim_events(conn: asyncpg.Connection, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """Record that ``consumer`` handles these event ids now, in one statement; returns those it had not handled.

    As :func:`claim_event`, inside the handler's transaction. The ids are claimed in sorted order, so two
    transactions claiming overlapping ids (a redelivered event in two batches) wait for each other instead of
    deadlocking.
    """
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, id FROM unnest($2::text[]) AS id ORDER BY id "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        sorted(set(event_ids)),
    )
    return {row["event_id"] for row in rows}


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


def idempotent_batch(db: Database, consumer: str, handler: TransactionalBatchHandler) -> BatchHandler:
    """The batch form of :func:`idempotent` (for :class:`skyport.bus.Batching`): one transaction per batch.

    The wrapped handler gets the batch's events that this consumer has not handled yet, each id once and in
    delivery order, with a connection inside the open transaction; it must not commit. If it raises, nothing
    of the batch is recorded, and the bus handles the events again one by one.
    """

    async def handle(events: Sequence[CloudEvent[Any]]) -> None:
        async with db.transaction() as conn:
            claimed = await claim_events(conn, consumer, [event.id for event in events])
            fresh: dict[str, CloudEvent[Any]] = {}
            for event in events:
                if event.id in claimed:
                    fresh.setdefault(event.id, event)
            if len(fresh) < len(events):
                log.info("events already handled, skipped", consumer=consumer, skipped=len(events) - len(fresh))
            if fresh:
                await handler(conn, list(fresh.values()))

    return handle
