"""Skyport's bus topology as data: exchanges, every service's queues and bindings, retries, dead letters.

One declaration serves three readers, so that they cannot drift apart:

- ``skyport migrate`` declares it on the broker before anything is published (:func:`apply_topology`);
- each service declares the queue it consumes again when it starts, with the same arguments (idempotent);
- ``deploy/rabbitmq/definitions.json``, which a RabbitMQ node loads at boot, is generated from it
  (``skyport topology``, ``make schemas``) and a test fails when the two disagree.

Commands (``transfer.received``, ``file.archived``, ``ingest.*``) are work a Skyport service must do: they are
published as *mandatory*, so a command that no queue takes is a publish error the outbox retries, never a
silent drop. Data events (``dataset.*``, ``access.changed``) are news for consumers that may or may not
exist (the gateway's per-instance queues, downstream pipelines): nobody bound is not an error, so they are
not mandatory; whoever must not miss them declares a durable queue of their own, as with any topic exchange.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from skyport.events import EXCHANGE

DEAD_LETTER_EXCHANGE = f"{EXCHANGE}.dead-letter"
DEAD_LETTER_QUEUE = f"{EXCHANGE}.dead-letters"
REDELIVERY_LIMIT = 20
"""The broker dead-letters a message returned unacknowledged this many times (it keeps killing its consumer)."""
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class WorkQueue:
    """A durable quorum queue of one service, the topics bound to it, and its retry queue beside it."""

    service: str
    name: str
    bindings: tuple[str, ...]
    about: str

    @property
    def retry_queue(self) -> str:
        return retry_queue_name(self.name)


RECEIVER_INGEST_RESULTS = WorkQueue(
    "receiver",
    "receiver.ingest-results",
    ("ingest.completed", "ingest.failed"),
    "the ingestor's verdicts, which become the transfer states the monitors ask for",
)
INGESTOR_TRANSFER_RECEIVED = WorkQueue(
    "ingestor",
    "ingestor.transfer-received",
    ("transfer.received",),
    "staged files to verify and archive",
)
CATALOG_FILE_ARCHIVED = WorkQueue(
    "catalog",
    "catalog.file-archived",
    ("file.archived",),
    "archived files to catalogue",
)
NOTIFIER_DATASET = WorkQueue(
    "notifier",
    "notifier.dataset",
    ("dataset.#",),
    "dataset events to match against subscriptions (declared up front: no event may pass before it exists)",
)
NOTIFIER_ACCESS = WorkQueue(
    "notifier",
    "notifier.access",
    ("access.changed.#",),
    "membership changes: a revocation drops the person's waiting notices of that program at once",
)
WORK_QUEUES: tuple[WorkQueue, ...] = (
    RECEIVER_INGEST_RESULTS,
    INGESTOR_TRANSFER_RECEIVED,
    CATALOG_FILE_ARCHIVED,
    NOTIFIER_DATASET,
    NOTIFIER_ACCESS,
)
"""Every durable queue of the Skyport services. The gateway has none: each instance needs every event (they
wake its streams, they are not work to share), so it declares a transient queue of its own when it starts."""

COMMANDS = frozenset({"transfer.received", "file.archived", "ingest.completed", "ingest.failed"})
"""The event types published as mandatory (see the module's docstring)."""


def is_command(event_type: str) -> bool:
    """Whether events of this type must reach a queue (published as mandatory)."""
    return event_type in COMMANDS


def retry_queue_name(queue: str) -> str:
    return f"{queue}.retry"


def queue_arguments(*, transient: bool = False) -> dict[str, Any]:
    """The arguments of a consumed queue: failures go to the dead letters; quorum and a delivery limit if durable."""
    if transient:
        return {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    return {**QUORUM, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-delivery-limit": REDELIVERY_LIMIT}


def retry_queue_arguments(queue: str, *, transient: bool = False) -> dict[str, Any]:
    """The arguments of ``queue``'s retry queue: a message waits out its TTL there, then goes back to ``queue``."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-overflow": "reject-publish",
    }
    if transient:
        return arguments
    return {**QUORUM, **arguments, "x-dead-letter-strategy": "at-least-once"}


def work_queues(services: Collection[str] | None = None) -> list[WorkQueue]:
    """The work queues of these services (all when None)."""
    return [queue for queue in WORK_QUEUES if services is None or queue.service in services]


async def apply_topology(bus_url: str, services: Collection[str] | None = None) -> list[WorkQueue]:
    """Declare the exchanges, the dead letters, and the work queues of ``services`` (all when None) on the bus.

    Idempotent: what exists already is left as it is (with the same arguments, which RabbitMQ checks).
    """
    from skyport.bus import create_bus

    queues = work_queues(services)
    bus = create_bus(bus_url, service="skyport-migrate")
    await bus.start()  # declares the exchanges and the dead letters
    try:
        await bus.declare_queues(queues)
    finally:
        await bus.close()
    return queues


# --- RabbitMQ definitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerUser:
    """A user a definitions file creates: a node that loads definitions at boot creates no default user."""

    name: str
    password: str
    tags: str = "administrator"


def rabbitmq_definitions(*, vhost: str = "/", users: Sequence[BrokerUser] = ()) -> dict[str, Any]:
    """The whole topology as a RabbitMQ definitions document (https://www.rabbitmq.com/docs/definitions)."""
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name in (EXCHANGE, DEAD_LETTER_EXCHANGE)
    ]
    queues = [_queue(DEAD_LETTER_QUEUE, vhost, QUORUM)]
    bindings = [_binding(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, "#", vhost)]
    for queue in WORK_QUEUES:
        queues.append(_queue(queue.name, vhost, queue_arguments()))
        queues.append(_queue(queue.retry_queue, vhost, retry_queue_arguments(queue.name)))
        bindings += [_binding(EXCHANGE, queue.name, pattern, vhost) for pattern in queue.bindings]
    return {
        "vhosts": [{"name": vhost}],
        "users": [{"name": u.name, "password": u.password, "tags": u.tags} for u in users],
        "permissions": [
            {"user": u.name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"} for u in users
        ],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def _queue(name: str, vhost: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": arguments}


def _binding(source: str, queue: str, pattern: str, vhost: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": pattern,
        "arguments": {},
    }


def definitions_json(definitions: dict[str, Any]) -> str:
    return json.dumps(definitions, indent=2) + "\n"


def user_from_bus_url(url: str) -> tuple[BrokerUser, str]:
    """The user and virtual host an ``amqp://user:password@host/vhost`` URL names."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BrokerUser(unquote(parts.username or "guest"), unquote(parts.password or "guest")), vhost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``skyport topology``."""
    parser.add_argument("--bus-url", required=True, help="the services' SKYPORT_BUS_URL: its user and vhost")
    parser.add_argument("--out", type=Path, help="write here instead of printing")


def main(args: argparse.Namespace) -> int:
    """``skyport topology``: print (or write) the RabbitMQ definitions for the user and vhost of a bus URL."""
    user, vhost = user_from_bus_url(args.bus_url)
    text = definitions_json(rabbitmq_definitions(vhost=vhost, users=[user]))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0
