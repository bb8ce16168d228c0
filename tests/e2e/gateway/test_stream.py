"""From the instrument's disk to the observer's WebSocket: the gateway's stream, its cursor and its access rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from services.catalog.cataloguing import Cataloguer
from skyport.bus import create_bus
from skyport.db import Database
from skyport.events import FileArchived
from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
from tests.support.catalog import archived, event_of
from tests.support.catalog_api import archive_file
from tests.support.flow import Flow
from tests.support.gateway import StreamClient, ticket_for
from tests.support.waiting import eventually


@dataclass
class Observatory:
    flow: Flow
    sim: Simulator
    propid: str
    pi: str
    """The PI's token."""
    http: aiohttp.ClientSession

    def write(self) -> str:
        """Write one raw HIRES file of the program; its archive ID."""
        written = self.sim.write_file("HIRES", size_bytes=200_000)
        assert written.propid == self.propid
        return written.archive_id

    async def connect(self, token: str, **params: str) -> StreamClient:
        """A stream of tonight at Keck (the simulated night), or of the ``night`` given."""
        client = await StreamClient.connect(self.http, self.flow.gateway_url, token=token, params=list(params.items()))
        await eventually(lambda: client.live, timeout=20, what="the stream to go live")
        return client

    async def member(self, username: str, role: str | None) -> int:
        """The PI grants ``role`` to ``username`` (None: removes them) through the gateway; the HTTP status."""
        url = f"{self.flow.gateway_url}/v1/programs/KECK/{self.propid}/members/{username}"
        headers = {"Authorization": f"Bearer {self.pi}"}
        if role is None:
            async with self.http.delete(url, headers=headers) as response:
                return response.status
        async with self.http.put(url, headers=headers, json={"role": role}) as response:
            return response.status


@pytest.fixture
async def observatory(flow: Flow, instruments: InstrumentCatalog, unique: str) -> AsyncIterator[Observatory]:
    propid = f"2026B_G{int(unique, 16) % 1000:03d}"
    pi = await flow.user_token("alice")
    await flow.skyport("catalog", "add-program", "KECK", propid, "--title", "Gateway test", "--pi", "alice")
    await flow.start("receiver", "ingestor", "catalog", "gateway")
    await flow.start("monitor")
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31, programs={"KECK": [propid]})
    async with aiohttp.ClientSession() as http:
        yield Observatory(flow, sim, propid, pi, http)


async def test_a_written_file_reaches_members_and_no_one_else(observatory: Observatory) -> None:
    stranger_token = await observatory.flow.user_token("mallory")
    member = await observatory.connect(observatory.pi)
    stranger = await observatory.connect(stranger_token)
    hello = member.of_type("hello")[0]
    assert hello["user"] == "alice"
    assert [(p["mission"], p["propid"], p["role"]) for p in hello["programs"]] == [("KECK", observatory.propid, "pi")]
    assert stranger.of_type("hello")[0]["programs"] == []

    archive_id = observatory.write()
    await eventually(lambda: archive_id in member.archive_ids(), timeout=60, what="the file in the PI's stream")
    [received] = member.files(backlog=False)
    assert received["state"] == "new"
    assert received["public"] is False
    assert received["propid"] == observatory.propid
    assert received["instrument_name"] == "HIRES"

    # The file can be downloaded through the gateway with the token, and not by the stranger.
    url = f"{observatory.flow.gateway_url}{received['download_url']}"
    async with observatory.http.get(url, headers={"Authorization": f"Bearer {observatory.pi}"}) as response:
        assert response.status == 200
        assert response.headers["Repr-Digest"].startswith("sha-256=:")
        assert len(await response.read()) == received["size_bytes"]
    async with observatory.http.get(url, headers={"Authorization": f"Bearer {stranger_token}"}) as response:
        assert response.status == 404

    # The stranger's heartbeats move on (the gateway looked at that change), but no file ever came.
    await eventually(lambda: len(stranger.of_type("heartbeat")) >= 1, timeout=30, what="a heartbeat")
    assert stranger.files() == []

    # A revoked token's stream ends, with the reason.
    await observatory.flow.skyport("catalog", "revoke-token", "--user", "mallory")
    await asyncio.wait_for(stranger.closed.wait(), 30)
    assert stranger.ws.close_code == 4001
    await member.close()


async def test_a_reconnect_with_the_cursor_receives_exactly_the_gap(observatory: Observatory) -> None:
    first = observatory.write()
    client = await observatory.connect(observatory.pi)
    await eventually(lambda: first in client.archive_ids(), timeout=60, what="the first file")
    cursor = client.cursor
    assert cursor is not None
    await client.close()

    missed = [observatory.write() for _ in range(3)]
    watcher = await observatory.connect(observatory.pi)  # to know when the missed files are in the catalog
    await eventually(lambda: set(missed) <= set(watcher.archive_ids()), timeout=60, what="the missed files")

    resumed = await StreamClient.connect(
        observatory.http, observatory.flow.gateway_url, token=observatory.pi, params=[("cursor", cursor)]
    )
    await eventually(lambda: resumed.live, timeout=20, what="the resumed stream to go live")
    # Exactly the gap, no repeat of the first file, in the catalog's order (the watcher's, which need not be
    # the order they were written in: files are ingested concurrently).
    in_catalog_order = [a for a in watcher.archive_ids() if a in missed]
    assert sorted(in_catalog_order) == sorted(missed)
    assert resumed.archive_ids() == in_catalog_order
    assert all(m["backlog"] for m in resumed.of_type("file"))

    later = observatory.write()
    await eventually(lambda: later in resumed.archive_ids(), timeout=60, what="a live file after the resume")
    assert resumed.archive_ids() == [*in_catalog_order, later]
    for stream in (watcher, resumed):
        await stream.close()


async def test_a_collaborator_sees_files_at_once_and_stops_when_removed(observatory: Observatory) -> None:
    bob = await observatory.flow.user_token("bob")
    pi = await observatory.connect(observatory.pi)
    ticket = await ticket_for(observatory.http, observatory.flow.gateway_url, bob)
    collaborator = await StreamClient.connect(observatory.http, observatory.flow.gateway_url, ticket=ticket)
    await eventually(lambda: collaborator.live, timeout=20, what="bob's stream to go live")
    assert collaborator.of_type("hello")[0]["programs"] == []

    before = observatory.write()
    await eventually(lambda: before in pi.archive_ids(), timeout=60, what="a file before the grant")
    assert await observatory.member("bob", "collaborator") == 200
    # Granted: bob is told, receives the night's file he could not see, then new ones live.
    await eventually(lambda: collaborator.of_type("programs") != [], timeout=20, what="bob's new programs")
    await eventually(lambda: before in collaborator.archive_ids(), timeout=20, what="the night's file for bob")
    during = observatory.write()
    await eventually(lambda: during in collaborator.archive_ids(), timeout=60, what="a live file for bob")

    assert await observatory.member("bob", None) == 204
    await eventually(lambda: len(collaborator.of_type("programs")) == 2, timeout=20, what="bob's removal")
    assert collaborator.of_type("programs")[-1]["programs"] == []
    after = observatory.write()
    await eventually(lambda: after in pi.archive_ids(), timeout=60, what="a file after the removal")
    heartbeats = len(collaborator.of_type("heartbeat"))
    await eventually(lambda: len(collaborator.of_type("heartbeat")) > heartbeats, timeout=30, what="a heartbeat")
    assert after not in collaborator.archive_ids()

    # The ticket was good once only.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await StreamClient.connect(observatory.http, observatory.flow.gateway_url, ticket=ticket)
    assert refused.value.status == 401
    await pi.close()
    await collaborator.close()


async def test_a_release_reaches_a_protocol_2_client_as_one_files_message_whose_cursor_resumes_exactly(
    observatory: Observatory,
) -> None:
    flow, propid = observatory.flow, observatory.propid
    client = await observatory.connect(observatory.pi, protocol="2")
    assert client.of_type("hello")[0]["protocol"] == 2
    archive_ids = [f"KECK.BURST.{propid[-4:]}.{index:02d}" for index in range(4)]
    bus = create_bus(flow.amqp_url, service="test")
    await bus.start()
    try:
        for archive_id in archive_ids:
            await bus.publish(event_of(archived(archive_id, propid=propid)))
    finally:
        await bus.close()
    await eventually(
        lambda: set(archive_ids) <= set(client.archive_ids()), timeout=60, what="the products before the release"
    )
    before = client.cursor
    assert before is not None
    had = len(client.messages)  # the four may have come in one files message too (catalogued together)

    # One transaction makes the four public: the gateway reads them together and sends them in one message.
    url = f"{flow.gateway_url}/v1/programs/KECK/{propid}/release"
    headers = {"Authorization": f"Bearer {observatory.pi}"}
    async with observatory.http.post(url, json={"archive_ids": archive_ids}, headers=headers) as response:
        assert response.status == 200
    await eventually(lambda: any(m["type"] == "files" for m in client.messages[had:]), timeout=60, what="the release")
    [burst] = [m for m in client.messages[had:] if m["type"] in ("file", "files")]
    assert burst["type"] == "files"
    assert burst["backlog"] is False
    released = [item["file"] for item in burst["files"]]
    assert sorted(f["archive_id"] for f in released) == archive_ids
    assert all(f["state"] == "public" for f in released)
    assert burst["cursor"] == burst["files"][-1]["cursor"]

    # A client that had everything before the release and resumes from there gets exactly the release.
    resumed = await observatory.connect(observatory.pi, protocol="2", cursor=before)
    [gap] = resumed.of_type("files")
    assert gap["backlog"] is True
    assert [item["cursor"] for item in gap["files"]] == [item["cursor"] for item in burst["files"]]
    assert [item["file"]["archive_id"] for item in gap["files"]] == [f["archive_id"] for f in released]
    assert resumed.of_type("file") == []
    for stream in (client, resumed):
        await stream.close()


CONTENT = b"SIMPLE  =                    T" * 100


def keck_file(archive_id: str, propid: str, observed_at: datetime) -> FileArchived:
    """A Keck file as the ingestor announces it, observed at ``observed_at``."""
    when = observed_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return archived(archive_id, propid=propid, metadata={"observed_at": when})


async def test_a_night_is_the_site_s_observing_night_in_the_backlog_the_live_stream_and_the_api(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    """Keck's night of 21 November runs from noon to noon in Hawaii: 23:30 and 01:30 local time are one night,
    and so are the afternoon's calibrations after 0 h UT (14:00 in Hawaii), which a UT date split off."""
    propid = f"2026B_N{int(unique, 16) % 1000:03d}"
    pi = await flow.user_token("alice")
    await flow.skyport("catalog", "add-program", "KECK", propid, "--title", "Night test", "--pi", "alice")
    await flow.start("catalog", "gateway")
    hawaii = ZoneInfo("Pacific/Honolulu")
    local = {
        "before": datetime(2026, 11, 21, 11, 0, tzinfo=hawaii),  # the morning: still the night of the 20th
        "afternoon": datetime(2026, 11, 21, 15, 0, tzinfo=hawaii),  # 01:00 UT on the 22nd
        "late": datetime(2026, 11, 21, 23, 30, tzinfo=hawaii),
        "small_hours": datetime(2026, 11, 22, 1, 30, tzinfo=hawaii),
        "next": datetime(2026, 11, 22, 13, 0, tzinfo=hawaii),  # the next night's afternoon
    }
    files = {name: keck_file(f"HI.{unique}.{name}", propid, when) for name, when in local.items()}
    ids = {name: data.archive_id for name, data in files.items()}
    the_night = {ids["afternoon"], ids["late"], ids["small_hours"]}
    bus = create_bus(flow.amqp_url, service=f"test-{unique}")
    await bus.start()
    async with aiohttp.ClientSession() as http:
        try:
            stream = await StreamClient.connect(http, flow.gateway_url, token=pi, params=[("night", "2026-11-21")])
            await eventually(lambda: stream.live, timeout=20, what="the stream to go live")
            assert stream.of_type("hello")[0]["night"] == "2026-11-21"
            for data in files.values():
                await bus.publish(event_of(data))
            await eventually(lambda: set(ids.values()) <= set(stream.archive_ids()), timeout=30, what="every file")
        finally:
            await bus.close()

        # Live: every change comes, each file naming its night as the catalog decided it.
        nights = {f["archive_id"]: f["night"] for f in stream.files(backlog=False)}
        assert nights == {
            ids["before"]: "2026-11-20",
            ids["afternoon"]: "2026-11-21",
            ids["late"]: "2026-11-21",
            ids["small_hours"]: "2026-11-21",
            ids["next"]: "2026-11-22",
        }
        await stream.close()

        # Reloaded: the night's backlog holds exactly the files that came live as that night's.
        reloaded = await StreamClient.connect(http, flow.gateway_url, token=pi, params=[("night", "2026-11-21")])
        await eventually(lambda: reloaded.live, timeout=20, what="the reloaded stream to go live")
        assert {f["archive_id"] for f in reloaded.files(backlog=True)} == the_night
        await reloaded.close()

        # The API (the catalog's, through the gateway) agrees.
        headers = {"Authorization": f"Bearer {pi}"}
        params = {"night": "2026-11-21", "propid": propid}
        async with http.get(f"{flow.gateway_url}/v1/products", params=params, headers=headers) as response:
            assert response.status == 200, await response.text()
            products = (await response.json())["products"]
        assert {p["archive_id"] for p in products} == the_night
        assert {p["night"] for p in products} == {"2026-11-21"}
        async with http.get(f"{flow.gateway_url}/v1/nights") as response:
            rules = {r["mission"]: r for r in (await response.json())["missions"]}
        assert (rules["KECK"]["time_zone"], rules["KECK"]["boundary"]) == ("Pacific/Honolulu", "12:00")

        # Without a night, the stream follows tonight at the program's site.
        keck = instruments.mission("KECK").night
        before = keck.tonight()
        tonight = await StreamClient.connect(http, flow.gateway_url, token=pi)
        await eventually(lambda: tonight.live, timeout=20, what="tonight's stream to go live")
        assert tonight.of_type("hello")[0]["night"] in {before.isoformat(), keck.tonight().isoformat()}
        assert tonight.files() == []  # nothing of this program was observed tonight
        await tonight.close()


async def test_links_given_to_a_browser_through_the_gateway_point_at_the_gateway(flow: Flow, unique: str) -> None:
    """The README promises a browser one address: download and script links must not lead to the catalog's."""
    propid = f"2026B_L{int(unique, 16) % 1000:03d}"
    pi = await flow.user_token("alice")
    await flow.skyport("catalog", "add-program", "KECK", propid, "--pi", "alice")
    await flow.start("catalog", "gateway")
    db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=2)
    try:
        data = archived(f"HI.{unique}.1", propid=propid)
        data = await archive_file(db, flow.storage, data, CONTENT, Cataloguer(flow.catalog_url))
    finally:
        await db.close()
    headers = {"Authorization": f"Bearer {pi}"}
    async with aiohttp.ClientSession() as http:
        for base in (flow.gateway_url, flow.catalog_url):  # each door gives its own address
            async with http.get(f"{base}/v1/products", params={"propid": propid}, headers=headers) as response:
                [product] = (await response.json())["products"]
            assert product["access_url"] == f"{base}/v1/files/{data.archive_id}?version=1"
            async with http.get(f"{base}/v1/products/{data.archive_id}", headers=headers) as response:
                [version] = (await response.json())["versions"]
            assert version["access_url"] == f"{base}/v1/files/{data.archive_id}?version=1"
            script_url = f"{base}/v1/products/download-script"
            async with http.get(script_url, params={"propid": propid, "limit": "1"}, headers=headers) as response:
                script = await response.text()
            other = flow.catalog_url if base == flow.gateway_url else flow.gateway_url
            assert f"{base}/v1/files/" in script
            assert other not in script

        # And the link works there, for the one who may see it.
        async with http.get(product["access_url"].replace(flow.catalog_url, flow.gateway_url), headers=headers) as got:
            assert got.status == 200
            assert await got.read() == CONTENT
