"""From the instrument's disk to the observer's download: files through the ingest path into the catalog."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from skyport.bus import Bus, Subscription, create_bus
from skyport.events import EVENT_MODELS, CloudEvent
from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
from tests.support.flow import Flow
from tests.support.waiting import eventually


@pytest.fixture
async def dataset_events(flow: Flow, unique: str) -> AsyncIterator[list[CloudEvent[Any]]]:
    bus: Bus = create_bus(flow.amqp_url, service=f"test-{unique}")
    await bus.start()
    received: list[CloudEvent[Any]] = []

    async def collect(event: CloudEvent[Any]) -> None:
        received.append(event)

    await bus.subscribe(Subscription(f"test.{unique}.datasets", ("dataset.#",), collect, models=EVENT_MODELS))
    yield received
    await bus.close()


async def test_files_written_at_the_observatory_become_products_events_and_downloads(
    flow: Flow, instruments: InstrumentCatalog, dataset_events: list[CloudEvent[Any]], unique: str
) -> None:
    await flow.start("receiver", "ingestor", "catalog")
    await flow.start("monitor")
    await flow.skyport("catalog", "add-user", "boss", "--admin")
    admin = {"Authorization": f"Bearer {(await flow.skyport('catalog', 'issue-token', 'boss')).strip()}"}
    sim = Simulator(
        instruments,
        flow.watch_root,
        seed=int(unique, 16) % 2**31,
        programs={"KECK": [f"2026B_E{int(unique, 16) % 1000:03d}"]},
    )
    files = [sim.write_file("HIRES", size_bytes=300_000) for _ in range(2)]
    propid = files[0].propid
    assert propid is not None
    assert all(f.propid == propid for f in files)

    def announced(kind: str) -> list[CloudEvent[Any]]:
        return [e for e in dataset_events if e.type == f"dataset.{kind}" and e.data.propid == propid]

    await eventually(lambda: len(announced("new")) == 2, timeout=60, what="two dataset.new events")
    assert len(announced("first")) == 1
    announced_ids = {f.archive_id for e in announced("new") for f in e.data.files}
    assert announced_ids == {f.archive_id for f in files}
    assert announced("new")[0].routing_key() == f"dataset.new.keck.0.{propid.lower()}"

    base = f"http://127.0.0.1:{flow.catalog_port}/v1"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/products", params={"propid": propid}, headers=admin) as response:
            assert response.status == 200
            products = (await response.json())["products"]
        assert {p["archive_id"] for p in products} == announced_ids
        async with http.get(f"{base}/products", params={"propid": propid}) as response:
            assert (await response.json())["products"] == []  # proprietary: nothing for an anonymous caller

        simulated = files[0]
        async with http.get(f"{base}/files/{simulated.archive_id}", headers=admin) as response:
            assert response.status == 200
            content = await response.read()
            digest = response.headers["Repr-Digest"]
        expected = simulated.path.read_bytes()
        assert content == expected
        assert digest == f"sha-256=:{base64.b64encode(hashlib.sha256(expected).digest()).decode()}:"
        async with http.get(f"{base}/files/{simulated.archive_id}") as response:
            assert response.status == 404
