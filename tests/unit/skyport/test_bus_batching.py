"""Batch consumption in the bus, without a broker: taking a batch, and what becomes of each of its messages."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any, cast

import pytest

from skyport.bus import Batching, PermanentError, RetryPolicy, Subscription, create_bus
from skyport.bus.amqp import _Acks
from skyport.bus.base import Verdict, handle_batch, take_batch
from skyport.events import CloudEvent, IngestFailed
from skyport.metrics import BusMetrics
from tests.support.waiting import eventually


def failed(transfer: str) -> CloudEvent[IngestFailed]:
    return CloudEvent.create(IngestFailed(transfer_id=transfer, reason="test"), source="/skyport/tests")


async def nothing(event: Any) -> None:
    return None


def test_a_batch_must_fit_in_the_prefetch() -> None:
    with pytest.raises(ValueError, match="more messages than the prefetch"):
        Subscription("q", ("k",), nothing, prefetch=10, batching=Batching(nothing, size=20))
    with pytest.raises(ValueError, match="at least one message"):
        Batching(nothing, size=0)
    with pytest.raises(ValueError, match="between 0 and 60 seconds"):
        Batching(nothing, wait=-1)
    subscription = Subscription("q", ("k",), nothing, prefetch=450, batching=Batching(nothing, size=200))
    assert subscription.concurrent_batches == 2


async def test_a_batch_takes_what_is_waiting_without_waiting() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for item in range(7):
        queue.put_nowait(item)
    batch: list[int] = []

    # A long wait that would fail the test if it were waited out: five items are there already.
    await asyncio.wait_for(take_batch(batch, queue.get, size=5, wait=60), 5)

    assert batch == [0, 1, 2, 3, 4]
    assert queue.qsize() == 2


async def test_a_batch_waits_for_more_within_its_wait_then_goes_as_it_stands() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    batch: list[int] = []
    taking = asyncio.create_task(take_batch(batch, queue.get, size=3, wait=60))
    queue.put_nowait(1)
    await eventually(lambda: batch == [1], what="the first item")
    queue.put_nowait(2)
    queue.put_nowait(3)
    await asyncio.wait_for(taking, 5)  # full before its wait is over
    assert batch == [1, 2, 3]

    partial: list[int] = []
    queue.put_nowait(4)
    await asyncio.wait_for(take_batch(partial, queue.get, size=3, wait=0.05), 5)
    assert partial == [4]


class Handlers:
    """A batch handler that fails when told to, and a one-by-one handler that rejects or fails chosen events."""

    def __init__(self, *, batch_fails: bool, rejects: Collection[str] = (), fails: Collection[str] = ()) -> None:
        self.batch_fails = batch_fails
        self.rejects, self.fails = rejects, fails
        self.batches: list[list[str]] = []
        self.one_by_one: list[str] = []

    async def batch(self, events: Sequence[CloudEvent[Any]]) -> None:
        self.batches.append([e.id for e in events])
        if self.batch_fails:
            raise PermanentError("something in this batch is wrong")

    async def single(self, event: CloudEvent[Any]) -> None:
        self.one_by_one.append(event.id)
        if event.id in self.rejects:
            raise PermanentError("this one is wrong")
        if event.id in self.fails:
            raise RuntimeError("not now")

    def subscription(self) -> Subscription:
        return Subscription(
            "q", ("k",), self.single, retry=RetryPolicy(max_attempts=3), batching=Batching(self.batch, size=10)
        )


async def test_a_batch_that_succeeds_acks_all_its_valid_messages_and_dead_letters_the_invalid() -> None:
    events = [failed(str(i)) for i in range(3)]
    handlers = Handlers(batch_fails=False)
    metrics = BusMetrics()
    deliveries = [(events[0].to_json(), 1), (b"{not json", 1), (events[1].to_json(), 1), (events[2].to_json(), 4)]

    outcomes = await handle_batch(handlers.subscription(), deliveries, metrics)

    assert [o.verdict for o in outcomes] == [Verdict.ACK, Verdict.DEAD, Verdict.ACK, Verdict.ACK]
    assert "not a CloudEvents 1.0 JSON envelope" in outcomes[1].reason
    assert handlers.batches == [[e.id for e in events]]
    assert handlers.one_by_one == []
    assert (
        metrics.registry.get_sample_value(
            "skyport_messages_handled_total", {"service": "skyport", "queue": "q", "event_type": "ingest.failed"}
        )
        == 3
    )
    assert metrics.registry.get_sample_value("skyport_batch_messages_sum", {"service": "skyport", "queue": "q"}) == 3


async def test_a_failed_batch_is_handled_again_one_by_one_each_message_to_its_own_fate() -> None:
    good, rejected, failing, last_try = (failed(name) for name in ("good", "rejected", "failing", "last try"))
    handlers = Handlers(batch_fails=True, rejects={rejected.id}, fails={failing.id, last_try.id})
    metrics = BusMetrics()
    deliveries = [(good.to_json(), 1), (rejected.to_json(), 1), (failing.to_json(), 1), (last_try.to_json(), 3)]

    outcomes = await handle_batch(handlers.subscription(), deliveries, metrics)

    assert [o.verdict for o in outcomes] == [Verdict.ACK, Verdict.DEAD, Verdict.RETRY, Verdict.DEAD]
    assert outcomes[1].reason == "rejected by handler: this one is wrong"
    assert outcomes[2].reason == "RuntimeError: not now"
    assert outcomes[3].reason == "failed 3 times, last: RuntimeError: not now"
    assert handlers.one_by_one == [good.id, rejected.id, failing.id, last_try.id]  # in delivery order
    assert metrics.registry.get_sample_value("skyport_batches_failed_total", {"service": "skyport", "queue": "q"}) == 1


async def test_the_memory_bus_delivers_in_batches_and_dead_letters_the_bad_message_alone(unique: str) -> None:
    bus = create_bus(f"memory://batching-{unique}")
    await bus.start()
    try:
        events = [failed(f"{unique}-{i}") for i in range(6)]
        bad = events[2]
        handled: Counter[str] = Counter()
        batches: list[int] = []

        async def batch(received: Sequence[CloudEvent[Any]]) -> None:
            batches.append(len(received))
            if any(e.id == bad.id for e in received):
                raise RuntimeError("one of these is bad")
            handled.update(e.id for e in received)

        async def single(event: CloudEvent[Any]) -> None:
            if event.id == bad.id:
                raise PermanentError("bad")
            handled[event.id] += 1

        await bus.subscribe(
            Subscription(f"{unique}.q", (f"test.{unique}",), single, prefetch=6, batching=Batching(batch, size=3))
        )
        for event in events:  # all at once: two batches of three
            await bus.publish(event, routing_key=f"test.{unique}")

        await eventually(lambda: len(handled) == 5, what="the five good events")
        assert handled == Counter({e.id: 1 for e in events if e is not bad})
        assert batches == [3, 3]
        (letter,) = [d for d in await bus.dead_letters() if d.message_id == bad.id]
        assert letter.reason == "rejected by handler: bad"
    finally:
        await bus.close()


class FakeDelivery:
    """What the AMQP bus's acknowledgements use of an incoming message: its tag, and ack."""

    def __init__(self, tag: int, sent: list[tuple[int, bool]]) -> None:
        self.delivery_tag = tag
        self._sent = sent

    async def ack(self, multiple: bool = False) -> None:
        self._sent.append((self.delivery_tag, multiple))


async def test_a_batch_consumer_acks_with_one_frame_once_everything_before_is_settled() -> None:
    sent: list[tuple[int, bool]] = []
    acks = _Acks(cast(Any, "channel"))
    messages = [FakeDelivery(tag, sent) for tag in range(1, 7)]
    for message in messages:
        acks.delivered(cast(Any, message))

    await acks.ack(cast(Any, messages[3:]))  # a later batch done first: 1 to 3 are still being handled
    assert sent == []
    await acks.ack(cast(Any, messages[:3]))
    assert sent == [(6, True)]  # one frame for all six


async def test_a_message_left_unacknowledged_is_never_covered_by_a_later_ack() -> None:
    sent: list[tuple[int, bool]] = []
    acks = _Acks(cast(Any, "channel"))
    messages = [FakeDelivery(tag, sent) for tag in range(1, 5)]
    for message in messages:
        acks.delivered(cast(Any, message))

    await acks.ack(cast(Any, [messages[2]]))  # waits for 1 and 2
    await acks.keep_unacknowledged()  # 2's dead-letter publish failed: it must stay unacknowledged
    await acks.ack(cast(Any, [messages[0], messages[3]]))

    assert sent == [(3, False), (1, False), (4, False)]  # one by one, never "up to" a tag past 2
