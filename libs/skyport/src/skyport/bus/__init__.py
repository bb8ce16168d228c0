"""The event bus: one interface, an AMQP implementation (RabbitMQ) and an in-process one (``memory://``)."""

from __future__ import annotations

from skyport.bus.base import (
    BatchHandler,
    Batching,
    Bus,
    DeadLetter,
    Handler,
    OutgoingMessage,
    PermanentError,
    PublishError,
    PublishTimeout,
    RetryPolicy,
    Subscription,
    Unroutable,
)
from skyport.metrics import BusMetrics


def create_bus(
    url: str, *, metrics: BusMetrics | None = None, service: str = "skyport", publish_timeout: float = 10.0
) -> Bus:
    """The bus a URL names: ``amqp://`` / ``amqps://`` for RabbitMQ, ``memory://`` for the in-process bus."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("amqp", "amqps"):
        from skyport.bus.amqp import AmqpBus

        return AmqpBus(url, metrics=metrics, service=service, publish_timeout=publish_timeout)
    if scheme == "memory":
        from skyport.bus.memory import MemoryBus

        return MemoryBus(url, metrics=metrics, service=service)
    raise ValueError(f"unsupported bus URL scheme {scheme!r}: use amqp://, amqps:// or memory://")


__all__ = [
    "BatchHandler",
    "Batching",
    "Bus",
    "BusMetrics",
    "DeadLetter",
    "Handler",
    "OutgoingMessage",
    "PermanentError",
    "PublishError",
    "PublishTimeout",
    "RetryPolicy",
    "Subscription",
    "Unroutable",
    "create_bus",
]
