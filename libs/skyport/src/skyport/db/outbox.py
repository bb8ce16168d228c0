"""The transactional outbox: events committed with the change they describe, then published by a relay.

Never publish from inside a transaction, never commit and then publish: a crash in between loses the
event. Instead :func:`enqueue` writes the event in the caller's transaction, and :class:`OutboxRelay`
publishes committed rows with confirms and marks them sent. A crash between the publish and the mark
publishes the row again after the restart; consumers deduplicate on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import structlog

from skyport.bus import Bus, OutgoingMessage
from skyport.db.pool import Database
from skyport.events import CloudEvent
from skyport.metrics import BusMetrics

NOTIFY_CHANNEL = "skyport_outbox"

log = structlog.get_logger("skyport.outbox")


async def enqueue(conn: asyncpg.Connection, event: CloudEvent[Any], *, routing_key: str | None = None) -> None:
    """Add ``event`` to the outbox of the schema on ``conn``'s search path, inside the caller's transaction."""
    message = OutgoingMessage.from_event(event, routing_key)
    await conn.execute(
        "INSERT INTO outbox (event_id, event_type, subject, routing_key, correlation_id, body, event_time) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        message.message_id,
        message.event_type,
        event.subject,
        message.routing_key,
        message.correlation_id,
        message.body,
        message.timestamp,
    )
    # Delivered at commit, and not at all on rollback: the relay wakes without polling.
    await conn.execute("SELECT pg_notify($1, current_schema())", NOTIFY_CHANNEL)


async def enqueue_many(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
    """Add ``events`` to the outbox in one round trip, in this order (the order the relay keeps per subject).

    The batch form of :func:`enqueue`, for a transaction that emits many events (a consumer handling a batch).
    """
    if not events:
        return
    messages = [OutgoingMessage.from_event(event) for event in events]
    # The rows get their ids (the relay's order) in the order of ORDINALITY; the notification is sent once.
    await conn.execute(
        "WITH added AS (INSERT INTO outbox (event_id, event_type, subject, routing_key, correlation_id, body, "
        "event_time) SELECT event_id, event_type, subject, routing_key, correlation_id, body, event_time "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::timestamptz[]) "
        "WITH ORDINALITY AS e(event_id, event_type, subject, routing_key, correlation_id, body, event_time, n) "
        "ORDER BY n RETURNING 1) "
        "SELECT pg_notify($8, current_schema())",
        [m.message_id for m in messages],
        [m.event_type for m in messages],
        [event.subject for event in events],
        [m.routing_key for m in messages],
        [m.correlation_id for m in messages],
        [m.body for m in messages],
        [m.timestamp for m in messages],
        NOTIFY_CHANNEL,
    )


class OutboxRelay:
    """Publishes a schema's committed outbox rows in order, one relay at a time per schema.

    Several processes may run a relay for the same schema (scaled-out services): an advisory lock makes
    one of them the publisher and the others wait as standbys, so rows leave in commit order. Rows with
    the same subject are published one after another; different subjects go out concurrently.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        *,
        batch_size: int = 500,
        poll_interval: float = 2.0,
        retention: timedelta = timedelta(days=7),
        max_retry_delay: float = 30.0,
        metrics: BusMetrics | None = None,
        service: str = "skyport",
    ) -> None:
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retention = retention
        self.max_retry_delay = max_retry_delay
        """The longest wait between two tries of a subject whose row the broker refused (doubling from 0.5 s)."""
        self._held: dict[str, tuple[int, float]] = {}
        """Subjects whose next row failed to publish: how many tries failed, and when to try again (monotonic)."""
        self.metrics = metrics
        self.service = service
        self._wake = asyncio.Event()
        self._lock_key = f"skyport.outbox.{db.schema}"

    async def run(self) -> None:
        """Relay until cancelled; survives database and broker outages by retrying."""
        while True:
            try:
                await self._run_as_leader()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay interrupted, restarting", schema=self.db.schema, error=repr(exc))
                await asyncio.sleep(self.poll_interval)

    async def _run_as_leader(self) -> None:
        async with self.db.session() as listener:
            # A standby polls for the lock: the leader holds it for as long as its connection lives.
            while not await listener.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key):  # noqa: ASYNC110
                await asyncio.sleep(self.poll_interval)
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            try:
                last_prune = 0.0
                while True:
                    self._wake.clear()
                    sent = await self.relay_once()
                    if time.monotonic() - last_prune > 3600:
                        await self.prune()
                        last_prune = time.monotonic()
                    if sent < self.batch_size:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            finally:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                    await listener.execute("SELECT pg_advisory_unlock(hashtext($1))", self._lock_key)

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload == self.db.schema:
            self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many were published and marked sent."""
        rows = await self.db.pool.fetch(
            "SELECT id, event_id, event_type, subject, routing_key, correlation_id, body, event_time, created_at "
            "FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            self.batch_size,
        )
        if not rows:
            return 0
        by_subject: dict[str, list[asyncpg.Record]] = {}
        for row in rows:
            by_subject.setdefault(row["subject"] or row["event_id"], []).append(row)
        now = time.monotonic()
        due = {subject: group for subject, group in by_subject.items() if self._held.get(subject, (0, now))[1] <= now}
        results = await asyncio.gather(*(self._publish_in_order(group) for group in due.values()))
        failed = 0
        for (subject, group), published in zip(due.items(), results, strict=True):
            if len(published) == len(group):
                self._held.pop(subject, None)
            else:
                failed += len(group) - len(published)
                self._hold(subject, now)
        sent = [row_id for published in results for row_id in published]
        await self.mark_sent(sent)
        if self.metrics is not None:
            now, sent_ids = time.time(), set(sent)
            for row in rows:
                if row["id"] in sent_ids:
                    self.metrics.outbox_pending.labels(self.service).observe(now - row["created_at"].timestamp())
        if failed:
            log.warning("outbox rows not published, will retry", schema=self.db.schema, unsent=failed)
        return len(sent)

    def _hold(self, subject: str, now: float) -> None:
        """Try this subject again later, and later still each time it fails: a command that no queue takes yet
        (its consumer not deployed, a binding removed) stays unsent, neither lost nor retried in a busy loop, and
        holds back only the rows of its own subject (whose order it keeps)."""
        failures = self._held.get(subject, (0, now))[0] + 1
        self._held[subject] = (failures, now + min(self.max_retry_delay, 0.5 * 2 ** (failures - 1)))

    async def _publish_in_order(self, rows: Iterable[asyncpg.Record]) -> list[int]:
        """Publish one subject's rows in order, stopping at the first failure so order is kept."""
        published = []
        for row in rows:
            message = OutgoingMessage(
                routing_key=row["routing_key"],
                body=bytes(row["body"]),
                message_id=row["event_id"],
                event_type=row["event_type"],
                timestamp=row["event_time"],
                correlation_id=row["correlation_id"],
            )
            try:
                await self.bus.publish_message(message)
            except Exception as exc:
                log.warning(
                    "outbox publish failed",
                    event_id=row["event_id"],
                    event_type=row["event_type"],
                    routing_key=row["routing_key"],
                    error=repr(exc),
                )
                break
            published.append(row["id"])
        return published

    async def mark_sent(self, row_ids: list[int]) -> None:
        if row_ids:
            await self.db.pool.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", row_ids)

    async def prune(self) -> None:
        """Forget rows sent longer ago than the retention period (kept meanwhile for audits and replays)."""
        await self.db.pool.execute("DELETE FROM outbox WHERE sent_at < now() - $1::interval", self.retention)
