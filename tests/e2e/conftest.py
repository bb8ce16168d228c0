"""End-to-end fixtures: the real servers, and one observatory-to-archive flow per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from skyport.bus import Bus, Subscription, create_bus
from skyport.events import CloudEvent, FileArchived
from skyport.instruments import InstrumentCatalog, load_instruments
from tests.support.flow import INSTRUMENTS, Flow
from tests.support.servers import AMQP_URL, DATABASE_URL, ensure_postgresql, ensure_rabbitmq


@pytest.fixture(scope="session", autouse=True)
def servers() -> None:
    ensure_rabbitmq()
    ensure_postgresql()


@pytest.fixture(scope="session")
def instruments() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS)


@pytest.fixture
async def flow(tmp_path: Path, unique: str) -> AsyncIterator[Flow]:
    flow = Flow(tmp_path, AMQP_URL, DATABASE_URL, site=f"s{unique}")
    await flow.prepare()
    yield flow
    await flow.close()


class Archived:
    """Collects the file.archived events published on the real bus."""

    def __init__(self) -> None:
        self.events: list[CloudEvent[FileArchived]] = []

    async def __call__(self, event: CloudEvent[FileArchived]) -> None:
        self.events.append(event)

    def by_archive_id(self) -> dict[str, list[FileArchived]]:
        found: dict[str, list[FileArchived]] = {}
        for event in self.events:
            found.setdefault(event.data.archive_id, []).append(event.data)
        return found


@pytest.fixture
async def archived_events(flow: Flow, unique: str) -> AsyncIterator[Archived]:
    bus: Bus = create_bus(flow.amqp_url, service=f"test-{unique}")
    await bus.start()
    archived = Archived()
    await bus.subscribe(
        Subscription(f"test.{unique}.archived", ("file.archived",), archived, models={"file.archived": FileArchived})
    )
    yield archived
    await bus.close()
