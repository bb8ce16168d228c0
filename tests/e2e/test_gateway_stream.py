"""From the instrument's disk to the observer's WebSocket: the gateway's stream, its cursor and its access rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest

from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
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
        query = [("night", datetime.now(UTC).date().isoformat()), *list(params.items())]
        client = await StreamClient.connect(self.http, self.flow.gateway_url, token=token, params=query)
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
