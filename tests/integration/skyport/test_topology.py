"""The declared topology on a real RabbitMQ: what `skyport migrate` declares and what the definitions file loads."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from yarl import URL

from skyport.bus import Bus, Subscription, create_bus
from skyport.bus.topology import (
    RECEIVER_INGEST_RESULTS,
    WORK_QUEUES,
    WorkQueue,
    apply_topology,
    rabbitmq_definitions,
)
from skyport.events import EVENT_MODELS, CloudEvent
from tests.support.broker import _rabbitmqctl
from tests.support.servers import AMQP_URL
from tests.support.waiting import eventually


@pytest.fixture
async def fresh_vhost(unique: str) -> AsyncIterator[str]:
    """The URL of a virtual host of this test's own, empty, as on a first deployment."""
    name = f"skyport-topology-{unique}"
    await _rabbitmqctl("add_vhost", name)
    await _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield str(URL(AMQP_URL).with_path(f"/{name}"))
    await _rabbitmqctl("delete_vhost", name)


def a_command_for(queue: WorkQueue) -> CloudEvent[Any]:
    """A valid event of the (first) command a work queue takes."""
    samples: dict[str, dict[str, Any]] = {
        "transfer.received": {"archive_id": "HI.X"},
        "file.archived": {"archive_id": "HI.X"},
        "ingest.completed": {"transfer_id": "t", "archive_id": "HI.X", "version": 1},
        "ingest.failed": {"transfer_id": "t", "reason": "test"},
        # The notifier's queues take data events (dataset.#, access.changed.#): one of each stands for its command.
        "dataset.new": {"mission": "KECK", "propid": "P1", "level": "0", "type": "new"},
        "access.changed": {"mission": "KECK", "propid": "P1", "username": "u", "change": "revoked"},
    }
    data_events = {"dataset.#": "dataset.new", "access.changed.#": "access.changed"}
    event_type = data_events.get(queue.bindings[0], queue.bindings[0])
    model = EVENT_MODELS[event_type]
    return CloudEvent.create(model.model_construct(**samples[event_type]), source="/skyport/tests")


async def import_definitions(document: str) -> None:
    """Load a definitions document into the broker as a node does at boot."""
    # rabbitmqctl runs as the broker's own user, who must be able to read the file.
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=tempfile.gettempdir()) as file:
        file.write(document)
        file.flush()
        os.chmod(file.name, 0o644)
        await _rabbitmqctl("import_definitions", file.name)


async def messages_in(url: str, queue: str) -> int:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def publish_a_command_to_every_work_queue(url: str) -> Bus:
    bus = create_bus(url, service="test-topology")
    await bus.start()
    try:
        for queue in WORK_QUEUES:
            await bus.publish(a_command_for(queue))  # mandatory: raises Unroutable if nothing takes it
    except BaseException:
        await bus.close()
        raise
    return bus


async def test_migrate_declares_every_work_queue_so_commands_wait_for_their_first_consumer(fresh_vhost: str) -> None:
    await apply_topology(fresh_vhost)
    await apply_topology(fresh_vhost)  # idempotent

    bus = await publish_a_command_to_every_work_queue(fresh_vhost)
    try:
        for queue in WORK_QUEUES:
            assert await messages_in(fresh_vhost, queue.name) == 1, queue.name
        # The service declares its queue again when it starts: the same arguments, so the broker agrees, and the
        # command published before it started is delivered.
        received: list[CloudEvent[Any]] = []

        async def handler(event: CloudEvent[Any]) -> None:
            received.append(event)

        results = RECEIVER_INGEST_RESULTS
        models = {t: EVENT_MODELS[t] for t in results.bindings}
        await bus.subscribe(Subscription(results.name, results.bindings, handler, models=models))
        await eventually(lambda: len(received) == 1, what="the ingest result published before the receiver started")
        assert received[0].type == results.bindings[0]
    finally:
        await bus.close()


async def test_migrate_declares_only_the_named_services_queues(fresh_vhost: str) -> None:
    declared = await apply_topology(fresh_vhost, {"ingestor"})

    assert [q.name for q in declared] == ["ingestor.transfer-received"]
    assert await messages_in(fresh_vhost, "ingestor.transfer-received") == 0
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await messages_in(fresh_vhost, "catalog.file-archived")


async def test_the_definitions_file_loads_the_same_topology_the_services_declare(fresh_vhost: str) -> None:
    vhost = URL(fresh_vhost).path[1:]
    await import_definitions(json.dumps(rabbitmq_definitions(vhost=vhost)))

    bus = await publish_a_command_to_every_work_queue(fresh_vhost)
    await bus.close()
    # Declaring from code afterwards (migrate, a service's start) finds the same arguments: no precondition fails.
    await apply_topology(fresh_vhost)
    for queue in WORK_QUEUES:
        assert await messages_in(fresh_vhost, queue.name) == 1, queue.name
