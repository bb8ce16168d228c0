"""The catalog as a real process, killed at the worst moment: each dataset event still arrives once.

Like the end-to-end flows, the test has a database and a RabbitMQ virtual host of its own
(:class:`tests.support.flow.Flow`), so the catalog runs on its real schema, queue and routing keys.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from skyport.bus import Bus, Subscription, create_bus
from tests.support.catalog import PUBLIC_URL, Received, archived, event_of
from tests.support.flow import Flow, _rabbitmqctl
from tests.support.servers import AMQP_URL, DATABASE_URL
from tests.support.waiting import eventually

# The outbox relay's leader lock for the catalog schema (skyport.db.outbox.OutboxRelay): while the test holds
# it, the catalog's relay waits as a standby and publishes nothing.
RELAY_LOCK = "SELECT pg_advisory_lock(hashtext('skyport.outbox.catalog'))"
RELAY_UNLOCK = "SELECT pg_advisory_unlock(hashtext('skyport.outbox.catalog'))"
# Makes the relay fail to mark rows sent after the broker confirmed them: a crash between publish and mark.
REFUSE_MARKING = """
CREATE FUNCTION catalog.refuse_marking() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'simulated crash before the rows are marked sent'; END $$;
CREATE TRIGGER refuse_marking BEFORE UPDATE ON catalog.outbox FOR EACH ROW EXECUTE FUNCTION catalog.refuse_marking();
"""
ALLOW_MARKING = "DROP TRIGGER refuse_marking ON catalog.outbox"


class CatalogFlow(Flow):
    """A flow with only the catalog: its own database (migrated for the catalog) and virtual host."""

    async def prepare(self) -> None:
        conn = await asyncpg.connect(self.server_database_url)
        try:
            await conn.execute(f"CREATE DATABASE {self.database_name}")
        finally:
            await conn.close()
        await _rabbitmqctl("add_vhost", self.vhost)
        await _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        await self.skyport("migrate", "catalog")


@pytest.fixture
async def flow(tmp_path: Path, unique: str) -> AsyncIterator[CatalogFlow]:
    flow = CatalogFlow(tmp_path, AMQP_URL, DATABASE_URL, site=f"c{unique}")
    flow.settings = {"SKYPORT_CATALOG_PUBLIC_URL": PUBLIC_URL, "SKYPORT_RELEASE_INTERVAL": "3600"}
    await flow.prepare()
    yield flow
    await flow.close()


@pytest.fixture
async def bus(flow: CatalogFlow, unique: str) -> AsyncIterator[Bus]:
    bus = create_bus(flow.amqp_url, service=f"test-{unique}")
    await bus.start()
    yield bus
    await bus.close()


async def test_a_catalog_killed_between_publish_and_mark_still_delivers_each_event_once(
    flow: CatalogFlow, bus: Bus, unique: str
) -> None:
    pi, propid = f"pi-{unique}", f"P{unique}"
    await flow.skyport("catalog", "add-user", pi, "--name", "Principal Investigator")
    await flow.skyport("catalog", "add-program", "KECK", propid, "--title", "Hot Jupiters", "--pi", pi)
    received = Received()
    await bus.subscribe(Subscription(f"test.{unique}.events", ("dataset.#", "access.#"), received))
    database = await asyncpg.connect(flow.database_url)
    try:
        # The catalog catalogues and commits while its relay cannot publish: the events wait in the outbox.
        await database.execute(RELAY_LOCK)
        catalog = await flow.start("catalog")
        files = [archived(f"HI.{unique}.{i}", propid=propid, obset=f"00{i % 2}") for i in range(4)]
        for data in files:
            await bus.publish(event_of(data))
        versions = "SELECT count(*) FROM catalog.product_versions"
        await eventually(lambda: _is(database, versions, 4), what="four products")
        await bus.publish(event_of(archived(files[0].archive_id, propid=propid, version=2, software_version="3.1")))
        await eventually(lambda: _is(database, versions, 5), what="a second version")
        # access.changed (the PI named by add-program), first, four new, one repro
        expected = {r["event_id"] for r in await database.fetch("SELECT event_id FROM catalog.outbox")}
        assert len(expected) == 7
        assert received.events == []

        # Then the relay publishes them all but fails to mark them sent, and the catalog is killed. (The test
        # takes the relay's lock back first, so that the kill does not cut a publish short: RabbitMQ 3.10 may
        # then stall new connections until the virtual host is deleted.)
        await database.execute(REFUSE_MARKING)
        await database.execute(RELAY_UNLOCK)
        await eventually(lambda: set(received.ids) == expected, what="every event published")
        await asyncio.wait_for(database.execute(RELAY_LOCK), 30)  # granted when the failed relay lets go
        await catalog.kill()
        await database.execute(ALLOW_MARKING)
        await database.execute(RELAY_UNLOCK)

        # Restarted, it publishes them again and marks them sent.
        catalog = await flow.start("catalog")
        unsent = "SELECT count(*) FROM catalog.outbox WHERE sent_at IS NULL"
        await eventually(lambda: _is(database, unsent, 0), what="the outbox drained")
        await eventually(lambda: min(received.ids.values()) >= 2, what="the second publication")
        assert await catalog.stop() == 0
    finally:
        await database.close()

    assert set(received.ids) == expected  # nothing lost, nothing invented ...
    events = received.unique()  # ... and once each after deduplication on the event id
    assert Counter(e.type for e in events) == Counter(
        {"dataset.new": 4, "dataset.first": 1, "dataset.repro": 1, "access.changed": 1}
    )
    assert Counter(f.archive_id for e in events if e.type == "dataset.new" for f in e.data.files) == Counter(
        {f.archive_id: 1 for f in files}
    )
    (repro,) = [e for e in events if e.type == "dataset.repro"]
    assert (repro.data.repro.supersedes_version, repro.data.repro.software_version) == (1, "3.1")
    (access,) = [e for e in events if e.type == "access.changed"]
    assert (access.data.username, access.data.role, access.data.change) == (pi, "pi", "granted")
    programs = json.loads(await flow.skyport("catalog", "list-programs", "--json"))
    assert [(p["propid"], p["pi"], p["products"], p["title"]) for p in programs] == [(propid, pi, 4, "Hot Jupiters")]


async def _is(conn: asyncpg.Connection, query: str, expected: int) -> bool:
    return bool(await conn.fetchval(query) == expected)
