"""The bus interface that services use, and the per-message logic both implementations share."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import structlog

from skyport.bus.topology import WorkQueue, is_command
from skyport.events import EVENT_MODELS, CloudEvent, EventData, InvalidEvent, decode_event
from skyport.metrics import BusMetrics

Handler = Callable[[CloudEvent[Any]], Awaitable[None]]
BatchHandler = Callable[[Sequence[CloudEvent[Any]]], Awaitable[None]]

ATTEMPT_HEADER = "x-skyport-attempt"
REASON_HEADER = "x-skyport-reason"
QUEUE_HEADER = "x-skyport-queue"
FAILED_AT_HEADER = "x-skyport-failed-at"

log = structlog.get_logger("skyport.bus")


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad content): the message is dead-lettered at once."""


class PublishError(Exception):
    """The broker did not take a message: it refused it (nack) or did not confirm it in time."""


class PublishTimeout(PublishError):
    """No confirm from the broker within the publish timeout."""


class Unroutable(PublishError):
    """A mandatory message that no queue is bound to take: the broker returned it instead of dropping it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing handler is tried again before its message is dead-lettered."""

    max_attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 3.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), with ±20 % jitter."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return float(base * random.uniform(0.8, 1.2))


@dataclass(frozen=True)
class Batching:
    """Hand a subscription's messages to ``handler`` in lists, for consumers whose cost is per transaction.

    A batch is up to ``size`` messages: those already waiting, and those arriving within ``wait`` seconds of the
    first. They are acknowledged together once ``handler`` returns. Invalid messages never reach it (they go to
    the dead letters at once, as always). If ``handler`` raises, whatever the exception, the batch's events are
    handled again one by one with the subscription's own handler: retries and dead letters stay per message, so
    one bad event goes its way with its reason and the others are handled. ``handler`` must therefore leave no
    trace when it raises (one transaction for the batch: :func:`skyport.db.idempotent_batch`).

    The subscription's prefetch bounds the messages held at once: ``prefetch // size`` batches are handled
    concurrently, so a prefetch of twice the size lets one batch fill while another is handled.
    """

    handler: BatchHandler
    size: int = 100
    wait: float = 0.05

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a batch holds at least one message")
        if not 0 <= self.wait < 60:
            raise ValueError("the batch wait is between 0 and 60 seconds")


@dataclass(frozen=True)
class Subscription:
    """A durable queue, the topics bound to it, and the handler that consumes it.

    With ``batching``, messages go to the batch handler in lists, and to ``handler`` one by one only when a
    batch fails (see :class:`Batching`).
    """

    queue: str
    bindings: tuple[str, ...]
    handler: Handler
    models: Mapping[str, type[EventData]] = field(default_factory=lambda: EVENT_MODELS)
    prefetch: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    service: str = "skyport"
    transient: bool = False
    """A queue of this process alone, deleted when it disconnects: for events every instance must see (the
    gateway's wake-ups), not for work. Not a quorum queue; nothing in it survives a restart."""
    batching: Batching | None = None

    def __post_init__(self) -> None:
        if not self.queue or not self.bindings:
            raise ValueError("a subscription needs a queue name and at least one binding")
        if self.prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if self.batching is not None and self.batching.size > self.prefetch:
            raise ValueError("a batch cannot hold more messages than the prefetch lets the consumer have")

    @property
    def concurrent_batches(self) -> int:
        """How many batches are handled at once, with :attr:`batching` (see :class:`Batching`)."""
        return self.prefetch // self.batching.size if self.batching is not None else 0


@dataclass(frozen=True)
class OutgoingMessage:
    """A serialised event ready for the broker (what the outbox stores and the relay sends)."""

    routing_key: str
    body: bytes
    message_id: str
    event_type: str
    timestamp: datetime
    correlation_id: str | None = None
    mandatory: bool | None = None
    """Whether no queue taking the message is a publish error (:class:`Unroutable`) rather than a drop; by
    default (None) the topology decides from the event type: commands are mandatory, data events are not."""

    @property
    def must_be_routed(self) -> bool:
        return is_command(self.event_type) if self.mandatory is None else self.mandatory

    @classmethod
    def from_event(cls, event: CloudEvent[Any], routing_key: str | None = None) -> OutgoingMessage:
        return cls(
            routing_key=routing_key or event.routing_key(),
            body=event.to_json(),
            message_id=event.id,
            event_type=event.type,
            timestamp=event.time,
            correlation_id=event.correlationid,
        )


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be handled, with the reason, as operators see it."""

    message_id: str
    queue: str
    routing_key: str
    event_type: str | None
    reason: str
    attempts: int
    dead_lettered_at: datetime | None
    body: bytes


class Verdict(Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class DeliveryOutcome:
    verdict: Verdict
    reason: str = ""
    delay: float = 0.0
    event_type: str | None = None


async def handle_delivery(
    subscription: Subscription, body: bytes, attempt: int, metrics: BusMetrics | None
) -> DeliveryOutcome:
    """Parse, run the handler, and decide what becomes of the message; never raises but on cancellation."""
    try:
        event = decode_event(body, subscription.models)
    except InvalidEvent as exc:
        return _invalid(subscription, exc, metrics)
    return await handle_event(subscription, event, attempt, metrics)


def _invalid(subscription: Subscription, exc: InvalidEvent, metrics: BusMetrics | None) -> DeliveryOutcome:
    outcome = DeliveryOutcome(Verdict.DEAD, str(exc))
    _count(metrics, subscription, outcome)
    log.warning("message dead-lettered", queue=subscription.queue, reason=outcome.reason)
    return outcome


async def handle_event(
    subscription: Subscription, event: CloudEvent[Any], attempt: int, metrics: BusMetrics | None
) -> DeliveryOutcome:
    """Run the subscription's handler on one parsed event and decide what becomes of its message."""
    # Both buses run each delivery in a task of its own, with its own copy of the context: binding without
    # unbinding cannot leak into another message's logs (and is cheaper than a context manager per message).
    # A batch handled one by one binds each event in turn, in the batch's task.
    structlog.contextvars.bind_contextvars(event_id=event.id, correlation_id=event.correlationid, event_type=event.type)
    started = time.perf_counter()
    try:
        await subscription.handler(event)
    except PermanentError as exc:
        outcome = DeliveryOutcome(Verdict.DEAD, f"rejected by handler: {exc}", event_type=event.type)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if attempt >= subscription.retry.max_attempts:
            outcome = DeliveryOutcome(Verdict.DEAD, f"failed {attempt} times, last: {reason}", event_type=event.type)
        else:
            delay = subscription.retry.delay(attempt)
            outcome = DeliveryOutcome(Verdict.RETRY, reason, delay, event.type)
            log.warning("handler failed, will retry", attempt=attempt, delay=round(delay, 3), error=reason)
    else:
        outcome = DeliveryOutcome(Verdict.ACK, event_type=event.type)
    finally:
        if metrics is not None:
            metrics.handler_duration.labels(subscription.service, subscription.queue, event.type).observe(
                time.perf_counter() - started
            )
    if outcome.verdict is Verdict.DEAD:
        log.error("message dead-lettered", queue=subscription.queue, reason=outcome.reason, attempt=attempt)
    _count(metrics, subscription, outcome)
    return outcome


async def handle_batch(
    subscription: Subscription, deliveries: Sequence[tuple[bytes, int]], metrics: BusMetrics | None
) -> list[DeliveryOutcome]:
    """What becomes of each of a batch's messages (``(body, attempt)`` pairs), in their order.

    Invalid messages are dead-lettered at once; the others go to the batch handler together, and if it
    raises, one by one to the subscription's handler (see :class:`Batching`). Never raises but on cancellation.
    """
    batching = subscription.batching
    assert batching is not None, "handle_batch needs a subscription with batching"
    outcomes: dict[int, DeliveryOutcome] = {}
    parsed: list[tuple[int, CloudEvent[Any]]] = []
    for index, (body, _) in enumerate(deliveries):
        try:
            parsed.append((index, decode_event(body, subscription.models)))
        except InvalidEvent as exc:
            outcomes[index] = _invalid(subscription, exc, metrics)
    if parsed:
        started = time.perf_counter()
        try:
            await batching.handler([event for _, event in parsed])
        except Exception as exc:
            _observe_batch(metrics, subscription, len(parsed), time.perf_counter() - started, failed=True)
            log.warning(
                "batch failed, handling its messages one by one",
                queue=subscription.queue,
                messages=len(parsed),
                error=f"{type(exc).__name__}: {exc}",
            )
            for index, event in parsed:
                outcomes[index] = await handle_event(subscription, event, deliveries[index][1], metrics)
        else:
            _observe_batch(metrics, subscription, len(parsed), time.perf_counter() - started, failed=False)
            for index, event in parsed:
                outcomes[index] = outcome = DeliveryOutcome(Verdict.ACK, event_type=event.type)
                _count(metrics, subscription, outcome)
    return [outcomes[index] for index in range(len(deliveries))]


def _observe_batch(
    metrics: BusMetrics | None, subscription: Subscription, size: int, seconds: float, *, failed: bool
) -> None:
    if metrics is None:
        return
    labels = (subscription.service, subscription.queue)
    metrics.batch_size.labels(*labels).observe(size)
    metrics.batch_duration.labels(*labels).observe(seconds)
    if failed:
        metrics.batches_failed.labels(*labels).inc()


T = TypeVar("T")


async def take_batch(batch: list[T], get: Callable[[], Awaitable[T]], size: int, wait: float) -> None:
    """Fill ``batch`` from ``get``: wait for a first item, then take up to ``size`` in all within ``wait`` seconds.

    Items already waiting are taken without waiting. The caller owns ``batch`` throughout, so that it can give
    back what was taken when this is cancelled midway.
    """
    batch.append(await get())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while len(batch) < size:
                batch.append(await get())


def _count(metrics: BusMetrics | None, subscription: Subscription, outcome: DeliveryOutcome) -> None:
    if metrics is None:
        return
    labels = (subscription.service, subscription.queue, outcome.event_type or "unknown")
    if outcome.verdict is Verdict.ACK:
        metrics.handled.labels(*labels).inc()
    elif outcome.verdict is Verdict.RETRY:
        metrics.retried.labels(*labels).inc()
    else:
        kind = "invalid" if outcome.event_type is None else "failed"
        metrics.dead_lettered.labels(*labels, kind).inc()


def utcnow() -> datetime:
    return datetime.now(UTC)


class Bus(abc.ABC):
    """Publish events to the ``skyport.v1`` topic exchange and consume them from durable queues.

    Delivery is at least once: a handler may see an event again after a failure or a reconnect, so
    consumers deduplicate on the event id (see :mod:`skyport.db.idempotency`).
    """

    def __init__(self, *, metrics: BusMetrics | None = None, service: str = "skyport") -> None:
        self.metrics = metrics
        self.service = service

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology (exchange, dead-letter exchange and queue)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming (unacknowledged messages return to their queues) and disconnect."""

    async def publish(self, event: CloudEvent[Any], *, routing_key: str | None = None) -> None:
        """Publish one event and wait for the broker's confirm; raise :class:`PublishError` otherwise."""
        await self.publish_message(OutgoingMessage.from_event(event, routing_key))

    @abc.abstractmethod
    async def publish_message(self, message: OutgoingMessage) -> None:
        """Publish an already serialised event and wait for the broker's confirm.

        Raises :class:`Unroutable` when the message must be routed (a command) and no queue takes it.
        """

    @abc.abstractmethod
    async def declare_queues(self, queues: Collection[WorkQueue]) -> None:
        """Declare these work queues, their retry queues and their bindings, without consuming them."""

    @abc.abstractmethod
    async def subscribe(self, subscription: Subscription) -> None:
        """Declare the subscription's queue and bindings and start consuming it."""

    @abc.abstractmethod
    async def stop_consuming(self, timeout: float) -> None:
        """Take no new messages; wait up to ``timeout`` for handlers in flight, then return theirs unacked."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the broker is reachable now."""

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The dead-lettered messages, oldest first, without removing them."""

    @abc.abstractmethod
    async def replay_dead_letters(self, message_ids: Collection[str] | None = None) -> int:
        """Send dead letters (all, or those with these ids) back to the queue that failed them."""

    @abc.abstractmethod
    async def drop_dead_letters(self, message_ids: Collection[str]) -> int:
        """Remove the dead letters with these ids for good (an operator decided they are garbage)."""

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def wait_for_tasks(tasks: Collection[asyncio.Task[Any]], timeout: float) -> None:
    """Wait for ``tasks`` up to ``timeout`` seconds, then cancel those still running and wait for them."""
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    _, still_running = await asyncio.wait(pending, timeout=timeout)
    for task in still_running:
        task.cancel()
    if still_running:
        await asyncio.wait(still_running)
