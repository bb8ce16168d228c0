"""Integration fixtures: the real RabbitMQ and PostgreSQL on localhost, and per-test schemas."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from skyport.bus import Bus, create_bus
from skyport.db import Database
from tests.support.schemas import migrated_schema
from tests.support.servers import AMQP_URL, DATABASE_URL, ensure_postgresql, ensure_rabbitmq


@pytest.fixture(scope="session", autouse=True)
def servers() -> None:
    ensure_rabbitmq()
    ensure_postgresql()


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def database_url() -> str:
    return DATABASE_URL


@pytest.fixture
async def database(unique: str) -> AsyncIterator[Database]:
    """A pool on a fresh schema with the library's tables (outbox, processed_events), dropped afterwards."""
    async with migrated_schema(DATABASE_URL, f"test_{unique}") as db:
        yield db


@pytest.fixture
async def bus(amqp_url: str, unique: str) -> AsyncIterator[Bus]:
    """A started AMQP bus on the test broker, closed afterwards."""
    bus = create_bus(amqp_url, service=f"test-{unique}")
    await bus.start()
    yield bus
    await bus.close()
