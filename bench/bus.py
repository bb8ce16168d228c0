"""Benchmark: messages per second through the Skyport bus next to raw aio-pika, measured in the same run.

Run it by hand (``.venv/bin/python bench/bus.py --help``) or with ``make bench``; it is not a test.

Both sides send the same messages (the JSON of one ``ingest.completed`` CloudEvent each, persistent, with the
same AMQP properties) through one RabbitMQ connection per side, to a durable quorum queue of their own:

- **raw aio-pika**: a topic exchange and a quorum queue of the benchmark's own, ``exchange.publish`` with
  publisher confirms, and a consumer that only acknowledges;
- **Skyport bus**: ``create_bus`` / ``Bus.publish`` / ``Bus.subscribe`` as a service uses them (with its
  Prometheus metrics), which adds serialising the event, the publish deadline, parsing every message into its
  pydantic model, the log context and the metrics.

Three figures per side, each in messages per second:

- *publish*: ``--messages`` publishes with at most ``--window`` waiting for their confirm at once;
- *consume*: from the queue holding every message to the last one handled, with ``--prefetch``;
- *end to end* (with ``--end-to-end``, it doubles the run time): the consumer running while the messages
  are published, to the last one handled.

Next to each rate is the CPU time this process spent per message in that phase. With the broker on the same
machine the wall-clock rates move with whatever else the machine does (the broker's disk above all), while the
client's CPU per message is the cost of the code under test; their ratio is the rate ratio to expect where the
client's CPU is the bottleneck, as in a busy service. The sides take turns for ``--rounds`` rounds, raw first
in odd rounds and Skyport first in even ones so that neither always runs after the other's broker clean-up, and
the median round of each figure is reported; every round's figures go to stderr as they come. Everything the
benchmark declares is deleted at the end; ``skyport.v1`` and its dead-letter exchange and queue are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from skyport.bus import Bus, BusMetrics, Subscription, create_bus
from skyport.events import CONTENT_TYPE, CloudEvent, IngestCompleted

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
TARGET_RATIO = 0.7
PHASE_TIMEOUT = 120.0  # seconds a consume phase may take before the benchmark gives up on it
_QUORUM = {"x-queue-type": "quorum"}


class Countdown:
    """Counts handled messages down to zero and tells whoever waits when it gets there."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.done = asyncio.Event()
        if count <= 0:
            self.done.set()

    def tick(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    async def wait(self, what: str) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), PHASE_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"{what}: {self.remaining} messages still missing after {PHASE_TIMEOUT:g}s") from None


class Side(Protocol):
    """One way of moving the benchmark's messages: raw aio-pika or the Skyport bus."""

    name: str
    queue_names: tuple[str, ...]
    exchange_names: tuple[str, ...]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, index: int) -> None:
        """Publish message number ``index`` of the workload and wait for the broker's confirm."""

    async def start_consuming(self, countdown: Countdown) -> None: ...

    async def stop_consuming(self) -> None: ...


class RawSide:
    """Plain aio-pika, written the way its documentation shows: the baseline."""

    name = "raw aio-pika"

    def __init__(self, url: str, run_id: str, events: Sequence[CloudEvent[Any]], prefetch: int) -> None:
        self.url = url
        self.prefetch = prefetch
        self.routing_key = f"bench.{run_id}"
        self.queue_name = f"bench.raw.{run_id}"
        self.queue_names: tuple[str, ...] = (self.queue_name,)
        self.exchange_names: tuple[str, ...] = (f"bench.raw.{run_id}",)
        # The same bytes and properties the Skyport bus puts on the wire, prepared before the clock starts.
        self._messages = [(event.to_json(), event.id, event.type, event.time) for event in events]
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._consumer: tuple[AbstractChannel, AbstractQueue, str] | None = None

    async def open(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.exchange_names[0], aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.queue_name, durable=True, arguments=_QUORUM)
        await queue.bind(self._exchange, self.routing_key)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, index: int) -> None:
        assert self._exchange is not None
        body, message_id, event_type, timestamp = self._messages[index]
        message = aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            type=event_type,
            timestamp=timestamp,
        )
        # Mandatory, as the Skyport bus publishes commands (these are ingest.completed): the same frames on the wire.
        await self._exchange.publish(message, self.routing_key, mandatory=True)

    async def start_consuming(self, countdown: Countdown) -> None:
        assert self._connection is not None

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            countdown.tick()

        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.declare_queue(self.queue_name, durable=True, arguments=_QUORUM)
        tag = await queue.consume(on_message)
        self._consumer = (channel, queue, tag)

    async def stop_consuming(self) -> None:
        if self._consumer is not None:
            channel, queue, tag = self._consumer
            self._consumer = None
            await queue.cancel(tag)
            await channel.close()


class SkyportSide:
    """The Skyport bus, used exactly as a service uses it."""

    name = "Skyport bus"

    def __init__(self, url: str, run_id: str, events: Sequence[CloudEvent[Any]], prefetch: int) -> None:
        self.url = url
        self.prefetch = prefetch
        self.routing_key = f"bench.{run_id}"
        self.queue_name = f"bench.skyport.{run_id}"
        self.queue_names: tuple[str, ...] = (self.queue_name, f"{self.queue_name}.retry")
        self.exchange_names: tuple[str, ...] = ()
        self._events = events
        self._bus: Bus | None = None
        self._countdown = Countdown(0)

    async def open(self) -> None:
        self._bus = create_bus(self.url, metrics=BusMetrics(), publish_timeout=30, service="bench")
        await self._bus.start()
        # Subscribing declares the queue and its binding; stop at once so that the publish phase fills it.
        await self._bus.subscribe(self._subscription())
        await self._bus.stop_consuming(timeout=0)

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    async def publish(self, index: int) -> None:
        assert self._bus is not None
        await self._bus.publish(self._events[index], routing_key=self.routing_key)

    async def start_consuming(self, countdown: Countdown) -> None:
        assert self._bus is not None
        self._countdown = countdown
        await self._bus.subscribe(self._subscription())

    async def stop_consuming(self) -> None:
        assert self._bus is not None
        await self._bus.stop_consuming(timeout=5)

    def _subscription(self) -> Subscription:
        return Subscription(
            queue=self.queue_name,
            bindings=(self.routing_key,),
            handler=self._handle,
            prefetch=self.prefetch,
            service="bench",
        )

    async def _handle(self, event: CloudEvent[Any]) -> None:
        self._countdown.tick()


@dataclass(frozen=True)
class Measurement:
    """One phase of one round: how fast, and how much of this process's CPU each message took."""

    rate: float  # messages per second
    cpu_per_message: float  # seconds


class Stopwatch:
    """Wall-clock and CPU time of this process from its creation."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def measure(self, count: int) -> Measurement:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return Measurement(count / wall, cpu / count)


PHASES = {"publish": "publish (confirmed)", "consume": "consume (acked)", "end to end": "end to end"}
Round = dict[str, Measurement]


async def publish_all(count: int, window: int, publish: Callable[[int], Awaitable[None]]) -> None:
    """Publish messages ``0 .. count-1`` keeping ``window`` of them waiting for their confirm at all times."""
    indexes = iter(range(count))

    async def publisher() -> None:
        for index in indexes:  # the publishers share one iterator, so each message goes out once
            await publish(index)

    await asyncio.gather(*(publisher() for _ in range(min(window, count))))


async def queue_depth(connection: AbstractRobustConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await channel.close()


async def run_round(side: Side, args: argparse.Namespace, admin: AbstractRobustConnection, label: str) -> Round:
    """Publish, consume, then maybe both at once, timing each phase; the side's queue is empty before and after."""
    count, window = args.messages, args.window
    measured: Round = {}
    progress(f"{label} {side.name}: publishing {count:,} messages")
    stopwatch = Stopwatch()
    await publish_all(count, window, side.publish)
    measured["publish"] = stopwatch.measure(count)

    depth = await queue_depth(admin, side.queue_names[0])
    if depth != count:
        raise RuntimeError(f"{side.name}: expected {count} messages in {side.queue_names[0]}, found {depth}")

    progress(f"{label} {side.name}: consuming them")
    countdown = Countdown(count)
    stopwatch = Stopwatch()
    await side.start_consuming(countdown)
    await countdown.wait(f"{side.name} consume")
    measured["consume"] = stopwatch.measure(count)
    await side.stop_consuming()

    if args.end_to_end:
        progress(f"{label} {side.name}: publishing and consuming at once")
        countdown = Countdown(count)
        await side.start_consuming(countdown)
        stopwatch = Stopwatch()
        await publish_all(count, window, side.publish)
        await countdown.wait(f"{side.name} end to end")
        measured["end to end"] = stopwatch.measure(count)
        await side.stop_consuming()

    figures = (f"{phase} {m.rate:,.0f}/s ({m.cpu_per_message * 1e6:,.0f} us CPU)" for phase, m in measured.items())
    progress(f"{label} {side.name}: {', '.join(figures)}")
    return measured


def median(rounds: Sequence[Round]) -> Round:
    """Each phase's median rate and median CPU per message over the rounds."""
    return {
        phase: Measurement(
            statistics.median(r[phase].rate for r in rounds),
            statistics.median(r[phase].cpu_per_message for r in rounds),
        )
        for phase in rounds[0]
    }


def make_events(count: int, run_id: str) -> list[CloudEvent[IngestCompleted]]:
    """Distinct events of one size, as the ingestor sends them (the archive IDs differ only in digits)."""
    return [
        CloudEvent.create(
            IngestCompleted(
                transfer_id=f"bench-{run_id}-{index:07d}", archive_id=f"BN.20260315.{index:07d}.00", version=1
            ),
            source="/skyport/bench",
        )
        for index in range(count)
    ]


async def delete_topology(admin: AbstractRobustConnection, sides: Sequence[Side]) -> None:
    """Delete the benchmark's queues and exchanges, each on a channel of its own (a failure closes one)."""
    doomed = [("queue", name) for side in sides for name in side.queue_names]
    doomed += [("exchange", name) for side in sides for name in side.exchange_names]
    for kind, name in doomed:
        channel = await admin.channel()
        try:
            if kind == "queue":
                await channel.queue_delete(name)
            else:
                await channel.exchange_delete(name)
        except aio_pika.exceptions.AMQPError as exc:
            progress(f"could not delete {kind} {name}: {exc!r}")
        finally:
            if not channel.is_closed:
                await channel.close()


def report(args: argparse.Namespace, body_size: int, raw_rounds: list[Round], skyport_rounds: list[Round]) -> str:
    """The table: each phase's median rate and CPU per message, side by side, with the ratios."""
    raw, skyport = median(raw_rounds), median(skyport_rounds)
    lines = [
        f"Skyport bus vs raw aio-pika: {args.messages:,} messages of {body_size} bytes, window {args.window}, "
        f"prefetch {args.prefetch}, median of {len(raw_rounds)} rounds",
        "",
        f"{'':<20}{'messages per second':^39}   {'client CPU per message':^39}",
        f"{'':<20}{'raw aio-pika':>13}{'Skyport bus':>13}{'Skyport/raw':>13}   "
        f"{'raw aio-pika':>13}{'Skyport bus':>13}{'raw/Skyport':>13}",
    ]
    for phase in raw:
        rate_ratio = skyport[phase].rate / raw[phase].rate
        cpu_ratio = raw[phase].cpu_per_message / skyport[phase].cpu_per_message
        lines.append(
            f"{PHASES[phase]:<20}{raw[phase].rate:>13,.0f}{skyport[phase].rate:>13,.0f}{rate_ratio:>13.2f}   "
            f"{raw[phase].cpu_per_message * 1e6:>10,.0f} us{skyport[phase].cpu_per_message * 1e6:>10,.0f} us"
            f"{cpu_ratio:>13.2f}"
        )
    short = [PHASES[phase] for phase in raw if skyport[phase].rate < TARGET_RATIO * raw[phase].rate]
    verdict = f"below it: {', '.join(short)}" if short else "every rate meets it"
    lines += ["", f"Target: the Skyport bus at {TARGET_RATIO:.2f} of raw aio-pika or better; {verdict}."]
    return "\n".join(line.rstrip() for line in lines)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def main(args: argparse.Namespace) -> None:
    run_id = uuid.uuid4().hex[:10]
    progress(f"preparing {args.messages:,} events (run {run_id})")
    events = make_events(args.messages, run_id)
    raw = RawSide(args.url, run_id, events, args.prefetch)
    skyport = SkyportSide(args.url, run_id, events, args.prefetch)
    sides: list[Side] = [raw, skyport]
    rounds: dict[Side, list[Round]] = {side: [] for side in sides}
    admin = await aio_pika.connect_robust(args.url)
    try:
        for side in sides:
            await side.open()
        for number in range(1, args.rounds + 1):
            for side in sides if number % 2 else reversed(sides):
                label = f"round {number}/{args.rounds}"
                rounds[side].append(await run_round(side, args, admin, label))
    finally:
        for side in sides:
            await side.close()
        await delete_topology(admin, sides)
        await admin.close()
    print(report(args, len(events[0].to_json()), rounds[raw], rounds[skyport]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("SKYPORT_BUS_URL", DEFAULT_URL), help="RabbitMQ URL")
    parser.add_argument("--messages", type=int, default=10_000, help="messages per phase (default 10000)")
    parser.add_argument("--window", type=int, default=100, help="publishes waiting for a confirm at once (default 100)")
    parser.add_argument("--prefetch", type=int, default=100, help="consumer prefetch count (default 100)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side, taking turns (default 4)")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also time publishing while consuming (doubles the run time)"
    )
    args = parser.parse_args(argv)
    for name in ("messages", "window", "prefetch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except KeyboardInterrupt:  # the queues and exchanges were deleted on the way out
        progress("interrupted")
        sys.exit(130)
