"""The transactional outbox and idempotent consumers, on the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from skyport.bus import Bus, OutgoingMessage, Subscription, Unroutable
from skyport.bus.amqp import AmqpBus
from skyport.db import Database, OutboxRelay, enqueue, enqueue_many, idempotent, idempotent_batch
from skyport.events import EXCHANGE, CloudEvent, IngestCompleted
from tests.support.catalog import Received
from tests.support.waiting import eventually


def completed(archive_id: str, version: int = 1) -> CloudEvent[IngestCompleted]:
    return CloudEvent.create(
        IngestCompleted(transfer_id=f"t-{archive_id}-{version}", archive_id=archive_id, version=version),
        source="/skyport/tests",
    )


class CrashBeforePublish(Bus):
    """A bus whose publish never returns: the relay process 'dies' holding committed, unsent rows."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def publish_message(self, message: OutgoingMessage) -> None:
        self.reached.set()
        await asyncio.Event().wait()

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def subscribe(self, subscription: Subscription) -> None: ...
    async def declare_queues(self, queues: Any) -> None: ...
    async def stop_consuming(self, timeout: float) -> None: ...
    async def ping(self) -> bool:
        return True

    async def dead_letters(self, limit: int = 100) -> list[Any]:
        return []

    async def replay_dead_letters(self, message_ids: Any = None) -> int:
        return 0

    async def drop_dead_letters(self, message_ids: Any) -> int:
        return 0


class CrashAfterPublish(OutboxRelay):
    """A relay that dies after the broker confirmed its batch and before it marked the rows sent."""

    async def mark_sent(self, row_ids: list[int]) -> None:
        raise asyncio.CancelledError


async def _unsent(db: Database) -> int:
    return int(await db.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


async def test_an_event_rolled_back_with_its_transaction_is_never_published(
    database: Database, bus: Bus, unique: str
) -> None:
    received = Received()
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), received))
    kept, dropped = completed(f"A{unique}"), completed(f"B{unique}")
    with pytest.raises(RuntimeError, match="the business change failed"):  # noqa: PT012
        async with database.transaction() as conn:
            await enqueue(conn, dropped, routing_key=f"test.{unique}")
            raise RuntimeError("the business change failed")
    async with database.transaction() as conn:
        await enqueue(conn, kept, routing_key=f"test.{unique}")
    relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.2).run())
    try:
        await eventually(lambda: kept.id in received.ids, what="the committed event")
        assert dropped.id not in received.ids
    finally:
        relay.cancel()


async def test_a_relay_stopped_after_the_commit_and_before_the_publish_delivers_after_restart(
    database: Database, bus: Bus, unique: str
) -> None:
    received = Received()
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), received))
    event = completed(f"A{unique}")
    async with database.transaction() as conn:
        await enqueue(conn, event, routing_key=f"test.{unique}")

    crashing_bus = CrashBeforePublish()
    doomed = asyncio.create_task(OutboxRelay(database, crashing_bus, poll_interval=0.2).run())
    await asyncio.wait_for(crashing_bus.reached.wait(), 10)
    doomed.cancel()  # the relay dies holding the row it had read
    await asyncio.gather(doomed, return_exceptions=True)
    assert await _unsent(database) == 1
    assert received.events == []

    relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.2).run())
    try:
        await eventually(lambda: received.ids == Counter({event.id: 1}), what="the event after restart")
        await eventually(lambda: _is_zero(_unsent(database)), what="the row marked sent")
    finally:
        relay.cancel()


async def test_a_crash_between_publish_and_mark_is_absorbed_by_the_idempotent_consumer(
    database: Database, bus: Bus, unique: str
) -> None:
    await database.pool.execute("CREATE TABLE archived_versions (archive_id text, version int)")

    async def record_version(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        await conn.execute("INSERT INTO archived_versions VALUES ($1, $2)", event.data.archive_id, event.data.version)

    deliveries = Received()
    handle = idempotent(database, "catalog-test", record_version)

    async def consumer(event: CloudEvent[Any]) -> None:
        await deliveries(event)
        await handle(event)

    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), consumer))
    events = [completed(f"A{unique}", version) for version in (1, 2, 3)]
    async with database.transaction() as conn:
        for event in events:
            await enqueue(conn, event, routing_key=f"test.{unique}")

    crashing = asyncio.create_task(CrashAfterPublish(database, bus, poll_interval=0.2).run())
    await eventually(lambda: len(deliveries.events) == 3, what="the first delivery of the three events")
    crashing.cancel()
    await asyncio.gather(crashing, return_exceptions=True)
    assert await _unsent(database) == 3  # published, but the relay died before saying so

    relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.2).run())
    try:
        await eventually(lambda: len(deliveries.events) == 6, what="the re-publication after restart")
        await eventually(lambda: _is_zero(_unsent(database)), what="the rows marked sent")
    finally:
        relay.cancel()
    assert deliveries.ids == Counter({e.id: 2 for e in events})  # each delivered twice ...
    rows = await database.pool.fetch("SELECT archive_id, version FROM archived_versions ORDER BY version")
    assert [(r["archive_id"], r["version"]) for r in rows] == [(f"A{unique}", v) for v in (1, 2, 3)]  # ... once


async def test_events_of_one_subject_are_published_in_commit_order(database: Database, bus: Bus, unique: str) -> None:
    received = Received()
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), received, prefetch=1))
    subjects = [f"A{unique}", f"B{unique}", f"C{unique}"]
    async with database.transaction() as conn:
        for version in range(1, 41):
            for subject in subjects:
                await enqueue(conn, completed(subject, version), routing_key=f"test.{unique}")
    relay = asyncio.create_task(OutboxRelay(database, bus, batch_size=25, poll_interval=0.2).run())
    try:
        await eventually(lambda: len(received.events) == 120, what="all 120 events")
    finally:
        relay.cancel()
    for subject in subjects:
        versions = [e.data.version for e in received.events if e.data.archive_id == subject]
        assert versions == list(range(1, 41))


async def test_only_one_relay_publishes_for_a_schema(database: Database, bus: Bus, unique: str) -> None:
    received = Received()
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), received))
    relays = [asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.1).run()) for _ in range(3)]
    try:
        events = [completed(f"A{unique}", v) for v in range(1, 51)]
        for event in events:
            async with database.transaction() as conn:
                await enqueue(conn, event, routing_key=f"test.{unique}")
        await eventually(lambda: len(received.events) >= 50, what="all events")
        await asyncio.sleep(0.5)
    finally:
        for relay in relays:
            relay.cancel()
    assert received.ids == Counter({e.id: 1 for e in events})
    assert [e.data.version for e in received.events] == list(range(1, 51))


async def _is_zero(value: Any) -> bool:
    return bool(await value == 0)


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_a_batch_is_handled_once_per_event_however_it_is_redelivered(database: Database, unique: str) -> None:
    await database.pool.execute("CREATE TABLE archived_versions (archive_id text, version int)")
    given: list[list[str]] = []

    async def record_versions(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
        given.append([e.id for e in events])
        await conn.executemany(
            "INSERT INTO archived_versions VALUES ($1, $2)", [(e.data.archive_id, e.data.version) for e in events]
        )

    handle = idempotent_batch(database, "catalog-test", record_versions)
    v1, v2, v3 = (completed(f"A{unique}", version) for version in (1, 2, 3))

    await handle([v1, v2, v1])  # the same event twice in one batch (published twice)
    await handle([v2, v1, v3])  # redelivered with a new one
    await handle([v3])  # redelivered alone: nothing to do

    assert given == [[v1.id, v2.id], [v3.id]]
    rows = await database.pool.fetch("SELECT version FROM archived_versions ORDER BY version")
    assert [r["version"] for r in rows] == [1, 2, 3]


async def test_a_failed_batch_records_none_of_its_events(database: Database, unique: str) -> None:
    async def fails(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
        raise RuntimeError("the batch failed")

    events = [completed(f"A{unique}", version) for version in (1, 2)]
    with pytest.raises(RuntimeError, match="the batch failed"):
        await idempotent_batch(database, "catalog-test", fails)(events)

    # The events were not claimed: handled one by one now, each is handled.
    handled: list[str] = []

    async def record(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        handled.append(event.id)

    for event in events:
        await idempotent(database, "catalog-test", record)(event)
    assert handled == [e.id for e in events]


async def test_events_enqueued_together_are_published_in_their_order(database: Database, bus: Bus, unique: str) -> None:
    received = Received()
    # Their own routing key (ingest.completed), which other tests' events may share: only ours are counted.
    await bus.subscribe(Subscription(f"{unique}.q", ("ingest.completed",), received, prefetch=1))
    events = [completed(f"A{unique}", version) for version in range(1, 31)]
    async with database.transaction() as conn:
        await enqueue_many(conn, events)

    def ours() -> list[str]:
        return [e.id for e in received.events if e.data.archive_id == f"A{unique}"]

    relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.2).run())
    try:
        await eventually(lambda: len(ours()) == 30, what="the 30 events")
    finally:
        relay.cancel()
    assert ours() == [e.id for e in events]
    rows = await database.pool.fetch("SELECT event_id, subject, routing_key, correlation_id FROM outbox ORDER BY id")
    assert [r["event_id"] for r in rows] == [e.id for e in events]
    assert {(r["subject"], r["routing_key"]) for r in rows} == {(events[0].subject, events[0].routing_key())}


class RecordingBus(AmqpBus):
    """The real AMQP bus, noting each publish the broker refused as unroutable."""

    def __init__(self, url: str) -> None:
        super().__init__(url, service="test-outbox")
        self.unroutable: list[str] = []

    async def publish_message(self, message: OutgoingMessage) -> None:
        try:
            await super().publish_message(message)
        except Unroutable:
            self.unroutable.append(message.message_id)
            raise


async def test_a_command_whose_binding_was_removed_stays_in_the_outbox_until_the_route_is_back(
    database: Database, amqp_url: str, unique: str
) -> None:
    key = f"test.{unique}.ingest.completed"
    received = Received()
    bus = RecordingBus(amqp_url)
    await bus.start()
    relay: asyncio.Task[None] | None = None
    try:
        await bus.subscribe(Subscription(f"{unique}.q", (key,), received))
        channel = await bus.connection.channel()
        queue = await channel.get_queue(f"{unique}.q")
        await queue.unbind(EXCHANGE, key)  # an operator's mistake, or a consumer not deployed yet
        event = completed(f"A{unique}")  # ingest.completed: a command, published as mandatory
        async with database.transaction() as conn:
            await enqueue(conn, event, routing_key=key)

        relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.1, max_retry_delay=0.5).run())
        await eventually(lambda: bus.unroutable.count(event.id) >= 2, what="the relay to try, fail, and try again")
        assert await _unsent(database) == 1  # kept, not marked sent as before when the broker dropped it
        assert received.events == []

        await queue.bind(EXCHANGE, key)
        await eventually(lambda: received.ids == Counter({event.id: 1}), what="the event once the route is back")
        await eventually(lambda: _is_zero(_unsent(database)), what="the row marked sent")
        await channel.close()
    finally:
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        await bus.close()


async def test_a_held_command_does_not_hold_back_other_subjects(database: Database, bus: Bus, unique: str) -> None:
    received = Received()
    routed, nowhere = f"test.{unique}.routed", f"test.{unique}.nowhere"
    await bus.subscribe(Subscription(f"{unique}.q", (routed,), received))
    stuck, others = completed(f"A{unique}"), [completed(f"B{unique}"), completed(f"C{unique}")]
    async with database.transaction() as conn:
        await enqueue(conn, stuck, routing_key=nowhere)
        for event in others:
            await enqueue(conn, event, routing_key=routed)

    relay = asyncio.create_task(OutboxRelay(database, bus, poll_interval=0.1).run())
    try:
        await eventually(lambda: received.ids == Counter({e.id: 1 for e in others}), what="the routable events")
        await eventually(lambda: _equals(_unsent(database), 1), what="only the unroutable row left unsent")
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
