"""The AMQP bus on RabbitMQ (aio-pika): confirmed publishes, quorum queues, retries, dead letters.

Topology (:mod:`skyport.bus.topology` declares it; a service declares what it consumes again at start):

- ``skyport.v1``: the topic exchange every event is published to;
- ``<queue>``: a durable quorum queue per subscription, bound to its topics, whose broker-side delivery
  limit dead-letters a message that keeps killing its consumer;
- ``<queue>.retry``: where a message waits out its back-off (per-message TTL) before the broker
  dead-letters it straight back into ``<queue>``;
- ``skyport.v1.dead-letter`` and ``skyport.v1.dead-letters``: the exchange and quorum queue that keep
  messages nobody could handle, with the reason in their headers, until an operator replays them.

Retry counts travel in the message (``x-skyport-attempt``), never in process memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from skyport.bus.base import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Bus,
    DeadLetter,
    DeliveryOutcome,
    OutgoingMessage,
    PublishError,
    PublishTimeout,
    Subscription,
    Unroutable,
    Verdict,
    handle_batch,
    handle_delivery,
    log,
    take_batch,
    utcnow,
    wait_for_tasks,
)
from skyport.bus.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    QUORUM,
    WorkQueue,
    queue_arguments,
    retry_queue_arguments,
    retry_queue_name,
)
from skyport.errors import Unreachable, connect_reason
from skyport.events import CONTENT_TYPE, EXCHANGE
from skyport.metrics import BusMetrics

_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)


class _Acks:
    """The acknowledgements of one channel's deliveries to a batched consumer, sent in as few frames as possible.

    An ack per message costs a frame, and a system call, per message: about a quarter of the cost of consuming.
    Once every delivery up to some tag is settled, one ack with ``multiple`` covers them all. A message left
    unacknowledged on purpose (its retry or dead-letter publish failed: the broker delivers it again when the
    channel closes) must never be covered by one, so from then on this channel's messages are acked one by one.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        """The channel (aiormq's) whose delivery tags these are: tags start again on a reopened channel."""
        self._unsettled: list[int] = []  # a heap of the tags delivered and not yet settled
        self._settled: dict[int, AbstractIncomingMessage] = {}  # settled, until every earlier tag is too
        self._cumulative = True

    def delivered(self, message: AbstractIncomingMessage) -> None:
        assert message.delivery_tag is not None
        heapq.heappush(self._unsettled, message.delivery_tag)

    async def ack(self, messages: Iterable[AbstractIncomingMessage]) -> None:
        """Acknowledge these messages, now or with a later ack that covers them too."""
        if not self._cumulative:
            for message in messages:
                await message.ack()
            return
        for message in messages:
            assert message.delivery_tag is not None
            self._settled[message.delivery_tag] = message
        last = None
        while self._unsettled and self._unsettled[0] in self._settled:
            last = self._settled.pop(heapq.heappop(self._unsettled))
        if last is not None:
            await last.ack(multiple=True)

    async def keep_unacknowledged(self) -> None:
        """A message of this channel stays unacknowledged: from now on, ack one by one."""
        self._cumulative = False
        await self.flush()

    async def flush(self) -> None:
        """Ack one by one the settled messages still waiting for an earlier one (before the channel closes)."""
        settled, self._settled = self._settled, {}
        for message in settled.values():
            await message.ack()


@dataclass(frozen=True)
class _Delivery:
    message: AbstractIncomingMessage
    acks: _Acks


@dataclass
class _Consumer:
    subscription: Subscription
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str = ""
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)
    waiting: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)
    """With batching: delivered messages not yet taken into a batch (unacknowledged, so never lost)."""
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    """With batching: the tasks that take batches from :attr:`waiting` and hand them to the handler."""
    acks: _Acks | None = None
    """With batching: the acknowledgements of the current channel's deliveries."""


class AmqpBus(Bus):
    """A :class:`Bus` on RabbitMQ with one robust connection that reconnects by itself."""

    def __init__(
        self,
        url: str,
        *,
        metrics: BusMetrics | None = None,
        service: str = "skyport",
        publish_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        connect_timeout: float = 30.0,
    ) -> None:
        super().__init__(metrics=metrics, service=service)
        self.url = url
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: list[_Consumer] = []

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("the bus is not started")
        return self._connection

    async def start(self) -> None:
        # A broker that accepts the TCP connection but never answers must fail the start, not hang it.
        try:
            self._connection = await aio_pika.connect_robust(
                self.url,
                timeout=self.connect_timeout,
                reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": f"skyport {self.service}"},
            )
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            raise Unreachable(
                "the RabbitMQ broker",
                self.url,
                connect_reason(exc, self.connect_timeout),
                "is RabbitMQ running there, and are the user, password and vhost in SKYPORT_BUS_URL right?",
            ) from exc
        # A mandatory message that no queue takes comes back and fails its publish (aiormq's PublishError).
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await self._channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        dead_letter_exchange = await self._channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dead_letters = await self._channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
        await dead_letters.bind(dead_letter_exchange, "#")

    async def close(self) -> None:
        if self._connection is None:
            return
        await self.stop_consuming(timeout=0)
        await self._connection.close()
        self._connection = None

    async def ping(self) -> bool:
        return self._connection is not None and not self._connection.is_closed and self._connection.connected.is_set()

    # --- publishing ---------------------------------------------------------------------------------

    async def publish_message(self, message: OutgoingMessage) -> None:
        if self._exchange is None:
            raise RuntimeError("the bus is not started")
        await self._publish(self._exchange, _to_amqp(message), message.routing_key, mandatory=message.must_be_routed)
        if self.metrics is not None:
            self.metrics.published.labels(self.service, message.event_type).inc()

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, *, mandatory: bool = False
    ) -> None:
        """Publish with a confirm; wait through a reconnect; raise on a nack, a return, or past the deadline.

        ``mandatory`` needs a channel opened with ``on_return_raises``: the broker returns such a message when no
        queue takes it, and the publish raises :class:`Unroutable` instead of reporting a drop as a success.

        A publish whose confirm was lost with the connection is sent again: the consumer may see it
        twice, which idempotent consumers absorb, but the broker never silently loses it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishTimeout(f"no confirm for {routing_key!r} within {self.publish_timeout:g}s")
            try:
                # aiormq enforces the timeout itself; an asyncio.wait_for around it would cost a task per publish.
                await exchange.publish(message, routing_key, mandatory=mandatory, timeout=remaining)
                return
            except aiormq.exceptions.PublishError as exc:
                raise Unroutable(f"no queue takes {routing_key!r} on exchange {exchange.name!r}") from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise PublishError(f"broker refused {routing_key!r}: {exc}") from exc
            except TimeoutError as exc:
                raise PublishTimeout(f"no confirm for {routing_key!r} within {self.publish_timeout:g}s") from exc
            except _CONNECTION_ERRORS as exc:
                log.info("publish interrupted by a lost connection, retrying", error=repr(exc))
                await asyncio.sleep(min(0.1, max(remaining, 0)))

    async def declare_queues(self, queues: Collection[WorkQueue]) -> None:
        channel = await self.connection.channel()
        try:
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            for queue in queues:
                await _declare(channel, exchange, queue.name, queue.bindings, transient=False)
        finally:
            await channel.close()

    # --- consuming ----------------------------------------------------------------------------------

    async def subscribe(self, subscription: Subscription) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=subscription.prefetch)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        queue = await _declare(channel, exchange, subscription.queue, subscription.bindings, subscription.transient)
        consumer = _Consumer(subscription, channel, queue)
        if subscription.batching is None:
            consumer.tag = await queue.consume(functools.partial(self._on_message, consumer))
        else:
            consumer.workers = [
                asyncio.create_task(self._work_in_batches(consumer), name=f"consume {subscription.queue} in batches")
                for _ in range(subscription.concurrent_batches)
            ]
            consumer.tag = await queue.consume(functools.partial(self._on_batched_message, consumer))
        self._consumers.append(consumer)

    async def _on_message(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        consumer.in_flight.add(task)
        try:
            attempt = _attempt(message)
            outcome = await handle_delivery(consumer.subscription, message.body, attempt, self.metrics)
            await self._settle(consumer, message, attempt, outcome)
        finally:
            consumer.in_flight.discard(task)

    async def _on_batched_message(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # closed already: the broker delivers the message again
        if consumer.acks is None or consumer.acks.channel is not channel:
            consumer.acks = _Acks(channel)  # the first delivery, or the first after a reconnect
        consumer.acks.delivered(message)
        consumer.waiting.put_nowait(_Delivery(message, consumer.acks))

    async def _work_in_batches(self, consumer: _Consumer) -> None:
        batching = consumer.subscription.batching
        assert batching is not None
        while True:
            # Cancelled midway (stop_consuming), the messages taken stay unacknowledged and return to the queue
            # when the channel closes.
            batch: list[_Delivery] = []
            await take_batch(batch, consumer.waiting.get, batching.size, batching.wait)
            task = asyncio.create_task(self._on_batch(consumer, batch))
            consumer.in_flight.add(task)
            try:
                await asyncio.shield(task)
            finally:
                consumer.in_flight.discard(task)

    async def _on_batch(self, consumer: _Consumer, batch: list[_Delivery]) -> None:
        attempts = [_attempt(delivery.message) for delivery in batch]
        deliveries = [(delivery.message.body, attempt) for delivery, attempt in zip(batch, attempts, strict=True)]
        outcomes = await handle_batch(consumer.subscription, deliveries, self.metrics)
        settled: dict[_Acks, list[AbstractIncomingMessage]] = {}
        for delivery, attempt, outcome in zip(batch, attempts, outcomes, strict=True):
            try:
                await self._forward(consumer, delivery.message, attempt, outcome)
            except Exception as exc:  # whatever it is: a message never settled would hold back every later ack
                _left_unacknowledged(consumer, exc)
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await delivery.acks.keep_unacknowledged()
            else:
                settled.setdefault(delivery.acks, []).append(delivery.message)
        for acks, messages in settled.items():
            try:
                await acks.ack(messages)
            except _CONNECTION_ERRORS as exc:
                _left_unacknowledged(consumer, exc)

    async def _settle(
        self, consumer: _Consumer, message: AbstractIncomingMessage, attempt: int, outcome: DeliveryOutcome
    ) -> None:
        """Ack the message, after sending it to the retry queue or the dead letters when its outcome says so."""
        try:
            await self._forward(consumer, message, attempt, outcome)
            await message.ack()
        except (*_CONNECTION_ERRORS, PublishError) as exc:
            _left_unacknowledged(consumer, exc)

    async def _forward(
        self, consumer: _Consumer, message: AbstractIncomingMessage, attempt: int, outcome: DeliveryOutcome
    ) -> None:
        """Send a copy of the message to the retry queue or to the dead letters when its outcome says so."""
        if outcome.verdict is Verdict.RETRY:
            retry = _copy(message, {ATTEMPT_HEADER: attempt + 1})
            retry.expiration = outcome.delay
            await self._publish(consumer.channel.default_exchange, retry, retry_queue_name(consumer.subscription.queue))
        elif outcome.verdict is Verdict.DEAD:
            dead = _copy(
                message,
                {
                    ATTEMPT_HEADER: attempt,
                    REASON_HEADER: outcome.reason[:4000],
                    QUEUE_HEADER: consumer.subscription.queue,
                    FAILED_AT_HEADER: utcnow().isoformat(),
                },
            )
            exchange = await consumer.channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
            await self._publish(exchange, dead, message.routing_key or "")

    async def stop_consuming(self, timeout: float) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await consumer.queue.cancel(consumer.tag)
            for worker in consumer.workers:
                worker.cancel()
        await wait_for_tasks([t for c in consumers for t in c.in_flight], timeout)
        for consumer in consumers:
            await asyncio.gather(*consumer.workers, return_exceptions=True)
            if consumer.acks is not None:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await consumer.acks.flush()
            # Closing the channel returns whatever it still holds unacknowledged to the queue.
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await consumer.channel.close()

    # --- dead letters -------------------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
            while len(letters) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_dead_letter(message))
        finally:
            await channel.close()  # returns every message we looked at
        return letters

    async def replay_dead_letters(self, message_ids: Collection[str] | None = None) -> int:
        async def replay(channel: AbstractChannel, message: AbstractIncomingMessage, letter: DeadLetter) -> bool:
            fresh = _copy(message, {ATTEMPT_HEADER: 1}, drop=(REASON_HEADER, QUEUE_HEADER, FAILED_AT_HEADER))
            # Straight to the queue that failed it: the other subscribers already have the event. Mandatory: if
            # that queue is gone, the letter stays a dead letter rather than vanish.
            try:
                await self._publish(channel.default_exchange, fresh, letter.queue, mandatory=True)
            except Unroutable:
                log.warning("dead letter kept: its queue is gone", message_id=letter.message_id, queue=letter.queue)
                return False
            return True

        return await self._take_dead_letters(message_ids, replay)

    async def drop_dead_letters(self, message_ids: Collection[str]) -> int:
        async def drop(channel: AbstractChannel, message: AbstractIncomingMessage, letter: DeadLetter) -> bool:
            log.info("dead letter dropped", message_id=letter.message_id, queue=letter.queue)
            return True

        return await self._take_dead_letters(message_ids, drop)

    async def _take_dead_letters(
        self,
        message_ids: Collection[str] | None,
        action: Callable[[AbstractChannel, AbstractIncomingMessage, DeadLetter], Awaitable[bool]],
    ) -> int:
        """Apply ``action`` to the chosen dead letters, then remove those it took; leave the others in place.

        A letter another channel is looking at (``skyport dlq list``, another operator) is unacknowledged and so
        invisible for a moment: when letters were named and some were not found, look again a few times.
        """
        wanted = None if message_ids is None else set(message_ids)
        taken = 0
        for look in range(_DEAD_LETTER_LOOKS):
            if look:
                await asyncio.sleep(0.2 * look)
            channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
                # Until the queue has nothing ready: the letters passed over stay unacknowledged on this channel,
                # so each is seen once, and they return to the queue when the channel closes.
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    letter = _dead_letter(message)
                    if wanted is not None and letter.message_id not in wanted:
                        continue
                    if await action(channel, message, letter):
                        await message.ack()
                        taken += 1
                        if wanted is not None:
                            wanted.discard(letter.message_id)
            finally:
                await channel.close()
            if not wanted:
                break
        return taken


# How many times named dead letters are looked for before they are said not to be there.
_DEAD_LETTER_LOOKS = 3


def _left_unacknowledged(consumer: _Consumer, exc: BaseException) -> None:
    # The broker will deliver the message again (to us after the reconnect, or to another consumer).
    log.warning("message left unacknowledged", queue=consumer.subscription.queue, error=repr(exc))


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) and value >= 1 else 1


async def _declare(
    channel: AbstractChannel, exchange: AbstractExchange, name: str, bindings: Iterable[str], transient: bool
) -> AbstractQueue:
    """Declare a consumed queue, its retry queue and its bindings, with the topology's arguments (idempotent).

    Durable quorum queues for work; a transient subscription's queues are this connection's alone.
    """
    kind: dict[str, Any] = {"durable": True}
    if transient:
        kind = {"durable": False, "exclusive": True, "auto_delete": True}
    queue = await channel.declare_queue(name, **kind, arguments=queue_arguments(transient=transient))
    await channel.declare_queue(
        retry_queue_name(name), **kind, arguments=retry_queue_arguments(name, transient=transient)
    )
    for pattern in bindings:
        await queue.bind(exchange, pattern)
    return queue


def _to_amqp(message: OutgoingMessage) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        content_type=CONTENT_TYPE,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.event_type,
        timestamp=message.timestamp,
        correlation_id=message.correlation_id,
    )


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any], drop: Collection[str] = ()) -> aio_pika.Message:
    merged = {k: v for k, v in (message.headers or {}).items() if k not in drop and k != "x-death"}
    merged.update(headers)
    return aio_pika.Message(
        message.body,
        headers=merged,
        content_type=message.content_type,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        timestamp=message.timestamp,
        correlation_id=message.correlation_id,
    )


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers: dict[str, Any] = dict(message.headers or {})
    queue = str(headers.get(QUEUE_HEADER, ""))
    reason = str(headers.get(REASON_HEADER, ""))
    at: datetime | None = None
    if FAILED_AT_HEADER in headers:
        at = datetime.fromisoformat(str(headers[FAILED_AT_HEADER]))
    deaths = headers.get("x-death") or []
    if deaths and not queue:
        # Dead-lettered by the broker itself: its delivery limit for a message that kept killing consumers.
        first = deaths[0]
        queue = str(first.get("queue", ""))
        reason = f"dead-lettered by the broker: {first.get('reason', 'unknown')}"
        at = first.get("time")
    return DeadLetter(
        message_id=message.message_id or "",
        queue=queue,
        routing_key=message.routing_key or "",
        event_type=message.type,
        reason=reason,
        attempts=_attempt(message),
        dead_lettered_at=at,
        body=message.body,
    )
