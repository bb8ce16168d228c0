"""Prometheus metrics shared by all services: one registry per process, a ``service`` label on each series."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

# Handler durations range from sub-millisecond catalog inserts to multi-second file moves.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class BusMetrics:
    """What every consumer reports: how long handlers take and how messages end."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        labels = ("service", "queue", "event_type")
        self.handler_duration = Histogram(
            "skyport_handler_duration_seconds",
            "Time spent in a message handler, successful or not.",
            labels,
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.handled = Counter(
            "skyport_messages_handled_total",
            "Messages handled successfully and acknowledged.",
            labels,
            registry=self.registry,
        )
        self.retried = Counter(
            "skyport_messages_retried_total",
            "Messages whose handler failed and that were scheduled again.",
            labels,
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "skyport_messages_dead_lettered_total",
            "Messages sent to the dead-letter queue (invalid, or out of attempts).",
            (*labels, "reason"),
            registry=self.registry,
        )
        batch_labels = ("service", "queue")
        self.batch_size = Histogram(
            "skyport_batch_messages",
            "Messages in a batch handed to a batch handler (subscriptions with batching).",
            batch_labels,
            registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        )
        self.batch_duration = Histogram(
            "skyport_batch_duration_seconds",
            "Time spent in a batch handler, successful or not (not counting a failed batch's one-by-one retry).",
            batch_labels,
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
        self.batches_failed = Counter(
            "skyport_batches_failed_total",
            "Batches whose handler raised, so that their messages were handled again one by one.",
            batch_labels,
            registry=self.registry,
        )
        self.published = Counter(
            "skyport_messages_published_total",
            "Messages published and confirmed by the broker.",
            ("service", "event_type"),
            registry=self.registry,
        )
        self.outbox_pending = Histogram(
            "skyport_outbox_delay_seconds",
            "Time between an event's commit into the outbox and its confirmed publication.",
            ("service",),
            registry=self.registry,
            buckets=_DURATION_BUCKETS,
        )
