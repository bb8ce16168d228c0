"""The in-process bus (``memory://``): the same topics, acks, retries and dead letters, without a broker.

It serves the embedded mode and fast unit tests. A :class:`MemoryBroker` plays RabbitMQ's part and
outlives the :class:`MemoryBus` clients connected to it, so a test can stop one client and see its
unacknowledged messages go to the next, exactly as with the real broker.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from skyport.bus.base import (
    Bus,
    DeadLetter,
    DeliveryOutcome,
    OutgoingMessage,
    Subscription,
    Unroutable,
    Verdict,
    handle_batch,
    handle_delivery,
    take_batch,
    utcnow,
    wait_for_tasks,
)
from skyport.bus.topic import topic_matches
from skyport.bus.topology import REDELIVERY_LIMIT, WorkQueue
from skyport.metrics import BusMetrics


@dataclass
class _Message:
    outgoing: OutgoingMessage
    attempt: int = 1
    deliveries: int = 0
    reason: str = ""
    queue: str = ""
    dead_lettered_at: datetime | None = None


class _Queue:
    """A FIFO whose consumers wait on futures of whatever loop they run in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bindings: set[str] = set()
        self.messages: deque[_Message] = deque()
        self._waiters: deque[asyncio.Future[_Message]] = deque()

    def put(self, message: _Message, *, front: bool = False) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(message)
                return
        if front:
            self.messages.appendleft(message)
        else:
            self.messages.append(message)

    async def get(self) -> _Message:
        if self.messages:
            return self.messages.popleft()
        waiter: asyncio.Future[_Message] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.messages.appendleft(waiter.result())
            raise


class MemoryBroker:
    """The in-process stand-in for RabbitMQ: queues, bindings, and the dead-letter queue."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.dead: list[_Message] = []
        self.connection_epoch = 0
        self._clients: set[MemoryBus] = set()

    def declare(self, name: str, bindings: Collection[str]) -> _Queue:
        queue = self.queues.setdefault(name, _Queue(name))
        queue.bindings.update(bindings)
        return queue

    def route(self, outgoing: OutgoingMessage) -> int:
        """Put the message on every queue bound to its routing key; returns how many took it."""
        taken = 0
        for queue in self.queues.values():
            if any(topic_matches(pattern, outgoing.routing_key) for pattern in queue.bindings):
                queue.put(_Message(outgoing))
                taken += 1
        return taken

    def dead_letter(self, message: _Message, queue: str, reason: str) -> None:
        self.dead.append(replace(message, queue=queue, reason=reason, dead_lettered_at=utcnow()))

    def delay(self, queue: _Queue, message: _Message, seconds: float) -> None:
        """Put a message back on its queue after ``seconds`` (the retry queue of the AMQP bus)."""
        asyncio.get_running_loop().call_later(seconds, queue.put, message)

    def requeue(self, queue: _Queue, message: _Message) -> None:
        """Return an unacknowledged message to the head of its queue, as a broker does when a consumer goes."""
        message.deliveries += 1
        if message.deliveries >= REDELIVERY_LIMIT:
            self.dead_letter(message, queue.name, f"returned unacknowledged {message.deliveries} times")
        else:
            queue.put(message, front=True)

    def drop_connections(self) -> None:
        """Simulate every client losing its connection: in-flight messages return to their queues.

        Handlers already running finish, but their acks arrive on a dead connection and are ignored, so
        their messages are delivered again: at least once, as with RabbitMQ.
        """
        self.connection_epoch += 1
        for client in self._clients:
            client._connection_lost()


_brokers: dict[str, MemoryBroker] = {}


def broker_for(url: str) -> MemoryBroker:
    """The broker a ``memory://name`` URL names; every client with the same URL shares it."""
    name = urlsplit(url).netloc
    return _brokers.setdefault(name, MemoryBroker())


@dataclass
class _Consumer:
    subscription: Subscription
    queue: _Queue
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    in_flight: dict[asyncio.Task[Any], list[_Message]] = field(default_factory=dict)
    """What each delivery task holds (one message, or a batch), to return it if the "connection" drops."""


class MemoryBus(Bus):
    """A :class:`Bus` whose broker lives in this process."""

    def __init__(self, url: str = "memory://", *, metrics: BusMetrics | None = None, service: str = "skyport"):
        super().__init__(metrics=metrics, service=service)
        self.broker = broker_for(url)
        self._consumers: list[_Consumer] = []
        self._started = False

    async def start(self) -> None:
        self.broker._clients.add(self)
        self._started = True

    async def close(self) -> None:
        await self.stop_consuming(timeout=0)
        self.broker._clients.discard(self)
        self._started = False

    async def ping(self) -> bool:
        return self._started

    async def publish_message(self, message: OutgoingMessage) -> None:
        if not self._started:
            raise RuntimeError("the bus is not started")
        # The broker returns a mandatory message no queue takes; the AMQP bus's publish raises, and so does this.
        if not self.broker.route(message) and message.must_be_routed:
            raise Unroutable(f"no queue takes {message.routing_key!r}")
        if self.metrics is not None:
            self.metrics.published.labels(self.service, message.event_type).inc()

    async def declare_queues(self, queues: Collection[WorkQueue]) -> None:
        for queue in queues:
            self.broker.declare(queue.name, queue.bindings)

    async def subscribe(self, subscription: Subscription) -> None:
        queue = self.broker.declare(subscription.queue, subscription.bindings)
        consumer = _Consumer(subscription, queue)
        if subscription.batching is None:
            consumer.workers = [
                asyncio.create_task(self._work(consumer), name=f"consume {subscription.queue}")
                for _ in range(subscription.prefetch)
            ]
        else:
            consumer.workers = [
                asyncio.create_task(self._work_in_batches(consumer), name=f"consume {subscription.queue} in batches")
                for _ in range(subscription.concurrent_batches)
            ]
        self._consumers.append(consumer)

    async def _work(self, consumer: _Consumer) -> None:
        while True:
            message = await consumer.queue.get()
            task = asyncio.create_task(self._deliver(consumer, message))
            consumer.in_flight[task] = [message]
            try:
                await asyncio.shield(task)
            finally:
                consumer.in_flight.pop(task, None)

    async def _work_in_batches(self, consumer: _Consumer) -> None:
        batching = consumer.subscription.batching
        assert batching is not None
        while True:
            batch: list[_Message] = []
            try:
                await take_batch(batch, consumer.queue.get, batching.size, batching.wait)
            except asyncio.CancelledError:
                for message in reversed(batch):  # taken but never handed to the handler: back, in their order
                    consumer.queue.put(message, front=True)
                raise
            task = asyncio.create_task(self._deliver_batch(consumer, batch))
            consumer.in_flight[task] = batch
            try:
                await asyncio.shield(task)
            finally:
                consumer.in_flight.pop(task, None)

    async def _deliver(self, consumer: _Consumer, message: _Message) -> None:
        epoch = self.broker.connection_epoch
        subscription = consumer.subscription
        try:
            outcome = await handle_delivery(subscription, message.outgoing.body, message.attempt, self.metrics)
        except asyncio.CancelledError:
            if epoch == self.broker.connection_epoch:
                self.broker.requeue(consumer.queue, message)
            raise
        if epoch != self.broker.connection_epoch:
            return  # the "connection" this delivery came on is gone; the broker has requeued it already
        self._settle(consumer, message, outcome)

    async def _deliver_batch(self, consumer: _Consumer, batch: list[_Message]) -> None:
        epoch = self.broker.connection_epoch
        deliveries = [(message.outgoing.body, message.attempt) for message in batch]
        try:
            outcomes = await handle_batch(consumer.subscription, deliveries, self.metrics)
        except asyncio.CancelledError:
            if epoch == self.broker.connection_epoch:
                for message in batch:
                    self.broker.requeue(consumer.queue, message)
            raise
        if epoch != self.broker.connection_epoch:
            return
        for message, outcome in zip(batch, outcomes, strict=True):
            self._settle(consumer, message, outcome)

    def _settle(self, consumer: _Consumer, message: _Message, outcome: DeliveryOutcome) -> None:
        """Ack, schedule a retry, or dead-letter, as the broker does with what the AMQP bus tells it."""
        if outcome.verdict is Verdict.RETRY:
            self.broker.delay(consumer.queue, replace(message, attempt=message.attempt + 1), outcome.delay)
        elif outcome.verdict is Verdict.DEAD:
            self.broker.dead_letter(message, consumer.subscription.queue, outcome.reason)

    def _connection_lost(self) -> None:
        for consumer in self._consumers:
            for held in consumer.in_flight.values():
                for message in held:
                    self.broker.requeue(consumer.queue, message)

    async def stop_consuming(self, timeout: float) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            for worker in consumer.workers:
                worker.cancel()
        in_flight = [task for consumer in consumers for task in consumer.in_flight]
        await wait_for_tasks(in_flight, timeout)
        for consumer in consumers:
            await asyncio.gather(*consumer.workers, return_exceptions=True)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [
            DeadLetter(
                message_id=m.outgoing.message_id,
                queue=m.queue,
                routing_key=m.outgoing.routing_key,
                event_type=m.outgoing.event_type,
                reason=m.reason,
                attempts=m.attempt,
                dead_lettered_at=m.dead_lettered_at,
                body=m.outgoing.body,
            )
            for m in itertools.islice(self.broker.dead, limit)
        ]

    async def replay_dead_letters(self, message_ids: Collection[str] | None = None) -> int:
        taken = self._take_dead_letters(message_ids)
        for message in taken:
            self.broker.declare(message.queue, ()).put(_Message(message.outgoing))
        return len(taken)

    async def drop_dead_letters(self, message_ids: Collection[str]) -> int:
        return len(self._take_dead_letters(message_ids))

    def _take_dead_letters(self, message_ids: Collection[str] | None) -> list[_Message]:
        taken: list[_Message] = []
        kept: list[_Message] = []
        for message in self.broker.dead:
            chosen = message_ids is None or message.outgoing.message_id in message_ids
            (taken if chosen else kept).append(message)
        self.broker.dead = kept
        return taken
