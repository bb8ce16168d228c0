"""The AMQP bus on RabbitMQ (aio-pika): confirmed publishes, quorum queues, retries, dead letters.

Topology, declared from code at start:

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
from collections.abc import Awaitable, Callable, Collection
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
    OutgoingMessage,
    PublishError,
    PublishTimeout,
    Subscription,
    Verdict,
    handle_delivery,
    log,
    utcnow,
    wait_for_tasks,
)
from skyport.events import CONTENT_TYPE, EXCHANGE
from skyport.metrics import BusMetrics

DEAD_LETTER_EXCHANGE = f"{EXCHANGE}.dead-letter"
DEAD_LETTER_QUEUE = f"{EXCHANGE}.dead-letters"
REDELIVERY_LIMIT = 20
_QUORUM = {"x-queue-type": "quorum"}
_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)


@dataclass
class _Consumer:
    subscription: Subscription
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str = ""
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)


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
        self._connection = await aio_pika.connect_robust(
            self.url,
            timeout=self.connect_timeout,
            reconnect_interval=self.reconnect_interval,
            client_properties={"connection_name": f"skyport {self.service}"},
        )
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        dead_letter_exchange = await self._channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dead_letters = await self._channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=_QUORUM)
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
        await self._publish(self._exchange, _to_amqp(message), message.routing_key)
        if self.metrics is not None:
            self.metrics.published.labels(self.service, message.event_type).inc()

    async def _publish(self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str) -> None:
        """Publish with a confirm; wait through a reconnect; raise on a nack or when the deadline passes.

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
                await exchange.publish(message, routing_key, mandatory=False, timeout=remaining)
                return
            except aiormq.exceptions.DeliveryError as exc:
                raise PublishError(f"broker refused {routing_key!r}: {exc}") from exc
            except TimeoutError as exc:
                raise PublishTimeout(f"no confirm for {routing_key!r} within {self.publish_timeout:g}s") from exc
            except _CONNECTION_ERRORS as exc:
                log.info("publish interrupted by a lost connection, retrying", error=repr(exc))
                await asyncio.sleep(min(0.1, max(remaining, 0)))

    # --- consuming ----------------------------------------------------------------------------------

    async def subscribe(self, subscription: Subscription) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=subscription.prefetch)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        queue = await channel.declare_queue(
            subscription.queue,
            durable=True,
            arguments={
                **_QUORUM,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-delivery-limit": REDELIVERY_LIMIT,
            },
        )
        await channel.declare_queue(
            _retry_queue(subscription.queue),
            durable=True,
            arguments={
                **_QUORUM,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": subscription.queue,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for pattern in subscription.bindings:
            await queue.bind(exchange, pattern)
        consumer = _Consumer(subscription, channel, queue)
        consumer.tag = await queue.consume(functools.partial(self._on_message, consumer))
        self._consumers.append(consumer)

    async def _on_message(self, consumer: _Consumer, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        consumer.in_flight.add(task)
        try:
            attempt = _attempt(message)
            outcome = await handle_delivery(consumer.subscription, message.body, attempt, self.metrics)
            if outcome.verdict is Verdict.RETRY:
                retry = _copy(message, {ATTEMPT_HEADER: attempt + 1})
                retry.expiration = outcome.delay
                await self._publish(consumer.channel.default_exchange, retry, _retry_queue(consumer.subscription.queue))
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
            await message.ack()
        except (*_CONNECTION_ERRORS, PublishError) as exc:
            # The broker will deliver the message again (to us after the reconnect, or to another consumer).
            log.warning("message left unacknowledged", queue=consumer.subscription.queue, error=repr(exc))
        finally:
            consumer.in_flight.discard(task)

    async def stop_consuming(self, timeout: float) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await consumer.queue.cancel(consumer.tag)
        await wait_for_tasks([t for c in consumers for t in c.in_flight], timeout)
        for consumer in consumers:
            # Closing the channel returns whatever it still holds unacknowledged to the queue.
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await consumer.channel.close()

    # --- dead letters -------------------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=_QUORUM)
            while len(letters) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letters.append(_dead_letter(message))
        finally:
            await channel.close()  # returns every message we looked at
        return letters

    async def replay_dead_letters(self, message_ids: Collection[str] | None = None) -> int:
        async def replay(channel: AbstractChannel, message: AbstractIncomingMessage, letter: DeadLetter) -> None:
            fresh = _copy(message, {ATTEMPT_HEADER: 1}, drop=(REASON_HEADER, QUEUE_HEADER, FAILED_AT_HEADER))
            # Straight to the queue that failed it: the other subscribers already have the event.
            await self._publish(channel.default_exchange, fresh, letter.queue)

        return await self._take_dead_letters(message_ids, replay)

    async def drop_dead_letters(self, message_ids: Collection[str]) -> int:
        async def drop(channel: AbstractChannel, message: AbstractIncomingMessage, letter: DeadLetter) -> None:
            log.info("dead letter dropped", message_id=letter.message_id, queue=letter.queue)

        return await self._take_dead_letters(message_ids, drop)

    async def _take_dead_letters(
        self,
        message_ids: Collection[str] | None,
        action: Callable[[AbstractChannel, AbstractIncomingMessage, DeadLetter], Awaitable[None]],
    ) -> int:
        """Apply ``action`` to the chosen dead letters, then remove them; leave the others in place."""
        taken = 0
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=_QUORUM)
            for _ in range(queue.declaration_result.message_count or 0):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letter = _dead_letter(message)
                if message_ids is not None and letter.message_id not in message_ids:
                    continue  # stays unacknowledged, and returns to the queue when the channel closes
                await action(channel, message, letter)
                await message.ack()
                taken += 1
        finally:
            await channel.close()
        return taken


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) and value >= 1 else 1


def _retry_queue(queue: str) -> str:
    return f"{queue}.retry"


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
