"""The bus contract, written once and run against both implementations: RabbitMQ and the in-process bus."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from skyport.bus import (
    Batching,
    Bus,
    OutgoingMessage,
    PermanentError,
    RetryPolicy,
    Subscription,
    Unroutable,
    create_bus,
)
from skyport.bus.memory import broker_for
from skyport.bus.topology import WorkQueue
from skyport.events import EXCHANGE, CloudEvent, DatasetNew, IngestFailed
from tests.support.broker import close_connections_named
from tests.support.servers import AMQP_URL
from tests.support.waiting import eventually

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2)


@dataclass
class Harness:
    """Creates buses of one kind against one broker, and can make that broker drop their connections."""

    kind: str
    url: str
    name: str
    buses: list[Bus] = field(default_factory=list)

    async def bus(self) -> Bus:
        bus = create_bus(self.url, service=self.name, publish_timeout=10)
        await bus.start()
        self.buses.append(bus)
        return bus

    async def drop_connections(self) -> None:
        if self.kind == "memory":
            broker_for(self.url).drop_connections()
        else:
            assert await close_connections_named(f"skyport {self.name}") >= 1

    async def set_binding(self, queue: str, pattern: str, *, bound: bool) -> None:
        """Add or remove one binding of a queue, as an operator (or a deployment that lacks a consumer) would."""
        if self.kind == "memory":
            bindings = broker_for(self.url).queues[queue].bindings
            if bound:
                bindings.add(pattern)
            else:
                bindings.discard(pattern)
            return
        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel()
            declared = await channel.get_queue(queue)
            await (declared.bind(EXCHANGE, pattern) if bound else declared.unbind(EXCHANGE, pattern))

    async def cleanup_dead_letters(self, ids: set[str]) -> None:
        if self.buses and ids:
            await self.buses[0].drop_dead_letters(ids)


@pytest.fixture(params=["memory", "amqp"])
async def harness(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Harness]:
    url = f"memory://contract-{unique}" if request.param == "memory" else AMQP_URL
    h = Harness(request.param, url, f"test-{unique}")
    yield h
    for bus in reversed(h.buses):
        await bus.close()


def failed(transfer: str) -> CloudEvent[IngestFailed]:
    return CloudEvent.create(IngestFailed(transfer_id=transfer, reason="test"), source="/skyport/tests")


def dataset_new(mission: str, level: str, propid: str) -> CloudEvent[DatasetNew]:
    return CloudEvent.create(
        DatasetNew(mission=mission, level=level, propid=propid, obsets=["001"]), source="/skyport/tests"
    )


class Recorder:
    """A handler that records what it received, and fails on demand."""

    def __init__(self, fail_times: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.events: list[CloudEvent[Any]] = []
        self.calls: Counter[str] = Counter()
        self.fail_times = fail_times
        self.error = error

    async def __call__(self, event: CloudEvent[Any]) -> None:
        self.calls[event.id] += 1
        if self.calls[event.id] <= self.fail_times:
            raise self.error(f"failure {self.calls[event.id]} of {self.fail_times}")
        self.events.append(event)

    @property
    def ids(self) -> set[str]:
        return {e.id for e in self.events}


async def test_topic_matching_routes_only_what_the_bindings_ask_for(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    mission = f"m{unique}"
    jwst_2b, any_level_of_one_program, everything = Recorder(), Recorder(), Recorder()
    await bus.subscribe(Subscription(f"{unique}.a", (f"dataset.*.{mission}.2b.*",), jwst_2b))
    await bus.subscribe(Subscription(f"{unique}.b", (f"dataset.new.{mission}.*.1011",), any_level_of_one_program))
    await bus.subscribe(Subscription(f"{unique}.c", (f"dataset.#.{mission}.#",), everything))

    sent = {
        "new-2b-1011": dataset_new(mission, "2b", "1011"),
        "new-1b-1011": dataset_new(mission, "1b", "1011"),
        "new-2b-2022": dataset_new(mission, "2b", "2022"),
        "other-mission": dataset_new(f"x{unique}", "2b", "1011"),
    }
    for event in sent.values():
        await bus.publish(event)

    expect_c = {sent[k].id for k in ("new-2b-1011", "new-1b-1011", "new-2b-2022")}
    await eventually(lambda: everything.ids == expect_c, what="the '#' subscriber to get its three events")
    await eventually(lambda: jwst_2b.ids == {sent["new-2b-1011"].id, sent["new-2b-2022"].id}, what="'*' matching")
    await eventually(
        lambda: any_level_of_one_program.ids == {sent["new-2b-1011"].id, sent["new-1b-1011"].id},
        what="one program's events",
    )
    assert sent["other-mission"].id not in everything.ids | jwst_2b.ids | any_level_of_one_program.ids


async def test_a_confirmed_publish_is_delivered_with_its_envelope_intact(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    recorder = Recorder()
    await bus.subscribe(Subscription(f"{unique}.q", (f"dataset.new.m{unique}.#",), recorder))
    event = CloudEvent.create(
        DatasetNew(mission=f"M{unique}", level="2B", propid="2026B_U123", obsets=["001", "002"]),
        source="/skyport/tests",
        correlation_id=f"corr-{unique}",
    )
    await bus.publish(event)  # returns only once the broker has confirmed it
    await eventually(lambda: len(recorder.events) == 1, what="the event")
    assert recorder.events[0] == event
    assert event.routing_key() == f"dataset.new.m{unique}.2b.2026b_u123"


async def test_a_command_that_no_queue_takes_is_a_publish_error_not_a_silent_drop(
    harness: Harness, unique: str
) -> None:
    bus = await harness.bus()

    with pytest.raises(Unroutable):
        await bus.publish(failed(unique), routing_key=f"test.{unique}.nobody")  # ingest.failed: a command

    # A data event is news for whoever listens: nobody listening is not an error.
    await bus.publish(dataset_new(f"nobody{unique}", "2b", "1011"))


async def test_a_command_published_before_its_consumer_starts_waits_in_the_declared_queue(
    harness: Harness, unique: str
) -> None:
    bus = await harness.bus()
    key = f"test.{unique}"
    await bus.declare_queues([WorkQueue("test", f"{unique}.work", (key,), "a queue declared up front")])
    event = failed(unique)

    await bus.publish(event, routing_key=key)  # no consumer yet: the queue holds it
    recorder = Recorder()
    await bus.subscribe(Subscription(f"{unique}.work", (key,), recorder))

    await eventually(lambda: recorder.ids == {event.id}, what="the command published before its consumer started")


async def test_a_removed_binding_makes_a_command_unroutable_until_it_is_back(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    key = f"test.{unique}"
    recorder = Recorder()
    await bus.subscribe(Subscription(f"{unique}.q", (key,), recorder))
    await harness.set_binding(f"{unique}.q", key, bound=False)

    with pytest.raises(Unroutable):
        await bus.publish(failed(unique), routing_key=key)

    await harness.set_binding(f"{unique}.q", key, bound=True)
    event = failed(unique)
    await bus.publish(event, routing_key=key)
    await eventually(lambda: recorder.ids == {event.id}, what="the command once its binding is back")


async def test_a_failing_handler_gets_the_message_again_until_it_succeeds(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    recorder = Recorder(fail_times=2)
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), recorder, retry=FAST_RETRY))
    event = failed(unique)
    await bus.publish(event, routing_key=f"test.{unique}")
    await eventually(lambda: recorder.ids == {event.id}, what="success on the third attempt")
    assert recorder.calls[event.id] == 3
    assert await _dead_letter_ids(bus) & {event.id} == set()


async def test_after_the_delivery_limit_the_message_is_dead_lettered_with_the_reason(
    harness: Harness, unique: str
) -> None:
    bus = await harness.bus()
    recorder = Recorder(fail_times=1000)
    queue = f"{unique}.q"
    await bus.subscribe(Subscription(queue, (f"test.{unique}",), recorder, retry=FAST_RETRY))
    event = failed(unique)
    await bus.publish(event, routing_key=f"test.{unique}")

    letter = await _wait_for_dead_letter(bus, event.id)
    assert recorder.calls[event.id] == FAST_RETRY.max_attempts
    assert letter.queue == queue
    assert letter.reason == "failed 3 times, last: RuntimeError: failure 3 of 1000"
    assert letter.attempts == 3

    # The operator fixes the cause and replays: the message goes back to the queue that failed it.
    recorder.fail_times = 0
    assert await bus.replay_dead_letters({event.id}) == 1
    await eventually(lambda: recorder.ids == {event.id}, what="the replayed message to be handled")
    assert event.id not in await _dead_letter_ids(bus)


async def test_an_invalid_message_goes_to_dead_letters_at_once(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    recorder = Recorder()
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), recorder, retry=FAST_RETRY))
    template = OutgoingMessage.from_event(failed(unique), routing_key=f"test.{unique}")
    bad = {
        f"{unique}-json": b"{not json",
        f"{unique}-type": template.body.replace(b'"ingest.failed"', b'"no.such.type"'),
        f"{unique}-data": template.body.replace(b'"reason":"test"', b'"reason":42'),
    }
    for message_id, body in bad.items():
        await bus.publish_message(
            OutgoingMessage(template.routing_key, body, message_id, "ingest.failed", template.timestamp)
        )
    letters = {m: await _wait_for_dead_letter(bus, m) for m in bad}
    assert recorder.calls == Counter()  # the handler never saw them
    assert "not a CloudEvents 1.0 JSON envelope" in letters[f"{unique}-json"].reason
    assert "unknown event type 'no.such.type'" in letters[f"{unique}-type"].reason
    assert "data.reason" not in letters[f"{unique}-data"].reason  # the path is relative to the payload
    assert "reason: Input should be a valid string" in letters[f"{unique}-data"].reason
    assert all(letter.attempts == 1 for letter in letters.values())
    await harness.cleanup_dead_letters(set(bad))


async def test_a_permanent_error_from_the_handler_is_not_retried(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    recorder = Recorder(fail_times=1000, error=PermanentError)
    await bus.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), recorder, retry=FAST_RETRY))
    event = failed(unique)
    await bus.publish(event, routing_key=f"test.{unique}")
    letter = await _wait_for_dead_letter(bus, event.id)
    assert recorder.calls[event.id] == 1
    assert letter.reason == "rejected by handler: failure 1 of 1000"
    await harness.cleanup_dead_letters({event.id})


async def test_no_ack_before_success_a_stopped_consumer_returns_its_message(harness: Harness, unique: str) -> None:
    first, second = await harness.bus(), await harness.bus()
    started = asyncio.Event()

    async def never_finishes(event: CloudEvent[Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    queue = f"{unique}.q"
    await first.subscribe(Subscription(queue, (f"test.{unique}",), never_finishes))
    event = failed(unique)
    await first.publish(event, routing_key=f"test.{unique}")
    await asyncio.wait_for(started.wait(), 20)

    # The handler has the message but has not finished: stopping gives it 0.2 s, then returns it unacked.
    await first.stop_consuming(timeout=0.2)
    recorder = Recorder()
    await second.subscribe(Subscription(queue, (f"test.{unique}",), recorder))
    await eventually(lambda: recorder.ids == {event.id}, what="the unacknowledged message to come back")


async def test_a_dropped_connection_loses_nothing(harness: Harness, unique: str) -> None:
    publisher, consumer = await harness.bus(), await harness.bus()
    received: Counter[str] = Counter()

    async def slow_handler(event: CloudEvent[Any]) -> None:
        await asyncio.sleep(0.002)
        received[event.id] += 1

    await consumer.subscribe(Subscription(f"{unique}.q", (f"test.{unique}",), slow_handler, prefetch=20))
    sent: list[str] = []

    async def publish(count: int) -> None:
        for _ in range(count):
            event = failed(unique)
            await publisher.publish(event, routing_key=f"test.{unique}")
            sent.append(event.id)

    await publish(150)
    await eventually(lambda: len(received) >= 20, what="consumption to be under way")
    dropping = asyncio.create_task(harness.drop_connections())
    await publish(150)  # publishing goes on through the outage: publish waits for the reconnect
    await dropping
    await publish(50)
    await eventually(lambda: set(received) == set(sent), timeout=60, what="every message after the outage")
    assert len(sent) == 350


async def _dead_letter_ids(bus: Bus) -> set[str]:
    return {letter.message_id for letter in await bus.dead_letters(limit=10_000)}


async def _wait_for_dead_letter(bus: Bus, message_id: str) -> Any:
    for _ in itertools.count():
        for letter in await bus.dead_letters(limit=10_000):
            if letter.message_id == message_id:
                return letter
        await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


# --- batching: the same guarantees, per message, for a consumer that takes its messages in batches ------------


class BatchRecorder:
    """A batch handler that records the batches it gets, and fails every batch holding an event ``fails_on``."""

    def __init__(self, fails_on: Callable[[CloudEvent[Any]], bool] = lambda _: False) -> None:
        self.batches: list[list[str]] = []
        self.handled: Counter[str] = Counter()
        """The events of the batches that succeeded."""
        self.fails_on = fails_on

    async def __call__(self, events: Sequence[CloudEvent[Any]]) -> None:
        self.batches.append([e.id for e in events])
        if any(self.fails_on(e) for e in events):
            raise RuntimeError("a bad event in the batch")
        self.handled.update(e.id for e in events)

    @property
    def ids(self) -> Counter[str]:
        return Counter(event_id for batch in self.batches for event_id in batch)


def batched(
    queue: str, key: str, handler: Any, batches: BatchRecorder, *, size: int = 4, wait: float = 1.0, prefetch: int = 8
) -> Subscription:
    return Subscription(
        queue, (key,), handler, prefetch=prefetch, retry=FAST_RETRY, batching=Batching(batches, size=size, wait=wait)
    )


async def test_a_batch_consumer_gets_the_waiting_messages_together_and_acks_them(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    one_by_one, batches = Recorder(), BatchRecorder()
    key, queue = f"test.{unique}", f"{unique}.q"
    # One batch at a time (the prefetch holds one batch), so that the batches are the same on every run.
    await bus.subscribe(batched(queue, key, one_by_one, batches, size=4, wait=1.0, prefetch=4))
    events = [failed(f"{unique}-{i}") for i in range(10)]

    await asyncio.gather(*(bus.publish(event, routing_key=key) for event in events))

    await eventually(lambda: sum(batches.ids.values()) == 10, what="the ten messages in batches")
    assert batches.ids == Counter({e.id: 1 for e in events})
    # Published at once: two full batches, then the last two when the third batch's wait runs out.
    assert [len(batch) for batch in batches.batches] == [4, 4, 2]
    assert one_by_one.calls == Counter()
    await _assert_nothing_left_unacknowledged(harness, bus, queue, key)


async def test_a_bad_message_in_a_batch_goes_to_dead_letters_alone_and_the_others_are_handled(
    harness: Harness, unique: str
) -> None:
    bus = await harness.bus()
    key, queue = f"test.{unique}", f"{unique}.q"
    handled: Counter[str] = Counter()

    def poisoned(event: CloudEvent[Any]) -> bool:
        return bool(event.data.transfer_id.endswith("poison"))

    async def one_by_one(event: CloudEvent[Any]) -> None:
        if poisoned(event):
            raise PermanentError("poisoned")
        handled[event.id] += 1

    batches = BatchRecorder(fails_on=poisoned)
    await bus.subscribe(batched(queue, key, one_by_one, batches, size=8, wait=1.0, prefetch=8))
    good = [failed(f"{unique}-{i}") for i in range(5)]
    poison = failed(f"{unique}-poison")
    template = OutgoingMessage.from_event(failed(unique), routing_key=key)
    invalid = OutgoingMessage(key, b"{not json", f"{unique}-invalid", "ingest.failed", template.timestamp)

    await asyncio.gather(
        *(bus.publish(event, routing_key=key) for event in [*good[:3], poison, *good[3:]]),
        bus.publish_message(invalid),
    )

    poison_letter = await _wait_for_dead_letter(bus, poison.id)
    invalid_letter = await _wait_for_dead_letter(bus, invalid.message_id)
    try:
        # One batch of the six valid messages, which failed: then each of them on its own.
        await eventually(lambda: handled == Counter({e.id: 1 for e in good}), what="the good messages")
        assert [sorted(batch) for batch in batches.batches] == [sorted(e.id for e in [*good, poison])]
        assert invalid.message_id not in batches.ids  # never handed to a handler
        assert poison_letter.reason == "rejected by handler: poisoned"
        assert "not a CloudEvents 1.0 JSON envelope" in invalid_letter.reason
        assert (poison_letter.queue, poison_letter.attempts) == (queue, 1)
        assert {e.id for e in good} & await _dead_letter_ids(bus) == set()
        await _assert_nothing_left_unacknowledged(harness, bus, queue, key)
    finally:
        await harness.cleanup_dead_letters({poison.id, invalid.message_id})


async def test_a_message_that_fails_a_batch_for_a_while_is_retried_on_its_own(harness: Harness, unique: str) -> None:
    bus = await harness.bus()
    key, queue = f"test.{unique}", f"{unique}.q"

    def flaky(event: CloudEvent[Any]) -> bool:
        return bool(event.data.transfer_id.endswith("flaky"))

    one_by_one = Recorder(fail_times=0)
    calls: Counter[str] = Counter()

    async def fails_once_when_flaky(event: CloudEvent[Any]) -> None:
        calls[event.id] += 1
        if flaky(event) and calls[event.id] == 1:
            raise RuntimeError("the database is restarting")
        await one_by_one(event)

    batches = BatchRecorder(fails_on=flaky)
    await bus.subscribe(batched(queue, key, fails_once_when_flaky, batches, size=8, wait=0.5, prefetch=16))
    events = [failed(f"{unique}-{i}") for i in range(4)] + [failed(f"{unique}-flaky")]

    await asyncio.gather(*(bus.publish(event, routing_key=key) for event in events))

    flaky_id = events[-1].id
    await eventually(lambda: flaky_id in one_by_one.ids, what="the flaky message handled at last")
    assert calls[flaky_id] == 2  # failed, went to the retry queue, then succeeded
    assert batches.ids[flaky_id] == 2  # each delivery was tried in a batch first
    assert one_by_one.calls + batches.handled == Counter({e.id: 1 for e in events})
    assert {e.id for e in events} & await _dead_letter_ids(bus) == set()


async def test_a_stopped_batch_consumer_returns_the_messages_it_holds(harness: Harness, unique: str) -> None:
    first, second = await harness.bus(), await harness.bus()
    key, queue = f"test.{unique}", f"{unique}.q"
    started = asyncio.Event()

    async def never_finishes(events: Sequence[CloudEvent[Any]]) -> None:
        started.set()
        await asyncio.Event().wait()

    await first.subscribe(
        Subscription(queue, (key,), Recorder(), prefetch=4, batching=Batching(never_finishes, size=2, wait=0.2))
    )
    events = [failed(f"{unique}-{i}") for i in range(6)]
    await asyncio.gather(*(first.publish(event, routing_key=key) for event in events))
    await asyncio.wait_for(started.wait(), 20)

    # Two batches in the handler, perhaps more messages waiting for a batch: all of them come back.
    await first.stop_consuming(timeout=0.2)
    recorder = Recorder()
    await second.subscribe(Subscription(queue, (key,), recorder))
    await eventually(lambda: recorder.ids == {e.id for e in events}, what="every unacknowledged message back")


async def test_a_dropped_connection_loses_nothing_from_a_batch_consumer(harness: Harness, unique: str) -> None:
    publisher, consumer = await harness.bus(), await harness.bus()
    received: Counter[str] = Counter()

    async def slow_batch(events: Sequence[CloudEvent[Any]]) -> None:
        await asyncio.sleep(0.01)
        received.update(e.id for e in events)

    key = f"test.{unique}"
    await consumer.subscribe(
        Subscription(f"{unique}.q", (key,), Recorder(), prefetch=40, batching=Batching(slow_batch, size=10, wait=0.05))
    )
    sent: list[str] = []

    async def publish(count: int) -> None:
        for _ in range(count):
            event = failed(unique)
            await publisher.publish(event, routing_key=key)
            sent.append(event.id)

    await publish(150)
    await eventually(lambda: len(received) >= 20, what="consumption to be under way")
    dropping = asyncio.create_task(harness.drop_connections())
    await publish(150)
    await dropping
    await publish(50)
    await eventually(lambda: set(received) == set(sent), timeout=60, what="every message after the outage")
    assert len(sent) == 350


async def _assert_nothing_left_unacknowledged(harness: Harness, bus: Bus, queue: str, key: str) -> None:
    """Stop consuming, which returns unacknowledged messages to the queue ahead of newer ones; a new consumer
    then gets a message published now, and nothing before it."""
    await bus.stop_consuming(timeout=5)
    after = Recorder()
    other = await harness.bus()
    await other.subscribe(Subscription(queue, (key,), after))
    sentinel = failed("sentinel")
    await other.publish(sentinel, routing_key=key)
    await eventually(lambda: sentinel.id in after.ids, what="the message published after the batches")
    assert [e.id for e in after.events] == [sentinel.id]
