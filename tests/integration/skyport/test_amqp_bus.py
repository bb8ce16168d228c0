"""What only the RabbitMQ bus can show: a broker's nack or silence reaches the publisher as an error."""

from __future__ import annotations

import aio_pika
import pytest

from skyport.bus import PublishError, PublishTimeout, create_bus
from skyport.events import EXCHANGE, CloudEvent, IngestFailed
from tests.support.proxy import FreezableProxy


def failed(transfer: str) -> CloudEvent[IngestFailed]:
    return CloudEvent.create(IngestFailed(transfer_id=transfer, reason="test"), source="/skyport/tests")


async def test_a_nack_from_the_broker_raises_to_the_publisher(amqp_url: str, unique: str) -> None:
    # A full queue that rejects new publishes makes the broker nack them.
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(
        f"{unique}.full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"}, auto_delete=True
    )
    bus = create_bus(amqp_url, service=f"test-{unique}")
    await bus.start()
    try:
        await queue.bind(EXCHANGE, f"test.{unique}")
        await bus.publish(failed(unique), routing_key=f"test.{unique}")  # fills the queue
        with pytest.raises(PublishError, match="broker refused"):
            await bus.publish(failed(unique), routing_key=f"test.{unique}")
    finally:
        await bus.close()
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()


async def test_a_broker_that_does_not_confirm_in_time_raises_a_timeout(unique: str) -> None:
    proxy = FreezableProxy("127.0.0.1", 5672)
    await proxy.start()
    bus = create_bus(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", service=f"test-{unique}", publish_timeout=1.0)
    await bus.start()
    try:
        proxy.freeze()
        with pytest.raises(PublishTimeout, match="no confirm"):
            await bus.publish(failed(unique), routing_key=f"test.{unique}")
    finally:
        proxy.thaw()
        await bus.close()
        await proxy.close()
