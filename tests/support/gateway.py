"""A WebSocket client of the gateway for tests and benchmarks: it keeps every message it receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp


class StreamClient:
    """One connection to ``/v1/stream``; ``messages`` fills in the background, each with its arrival time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        gateway_url: str,
        *,
        token: str | None = None,
        ticket: str | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> StreamClient:
        query = list(params) + ([("ticket", ticket)] if ticket else [])
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await session.ws_connect(f"{gateway_url}/v1/stream", params=query, headers=headers, heartbeat=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.arrivals.append(time.time())
                    self.messages.append(json.loads(message.data))
        finally:
            self.closed.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def files(self, *, backlog: bool | None = None) -> list[dict[str, Any]]:
        """The ``file`` objects received, in order, from ``file`` and (protocol 2) ``files`` messages; only
        backlog or only live ones if asked."""
        found: list[dict[str, Any]] = []
        for m in self.messages:
            if m["type"] in ("file", "files") and (backlog is None or m["backlog"] is backlog):
                found += [m["file"]] if m["type"] == "file" else [item["file"] for item in m["files"]]
        return found

    def archive_ids(self) -> list[str]:
        return [f["archive_id"] for f in self.files()]

    @property
    def live(self) -> bool:
        return bool(self.of_type("live"))

    @property
    def cursor(self) -> str | None:
        """The last cursor received: where to resume."""
        cursors = [m["cursor"] for m in self.messages if m.get("cursor")]
        return cursors[-1] if cursors else None

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def ticket_for(session: aiohttp.ClientSession, gateway_url: str, token: str) -> str:
    async with session.post(f"{gateway_url}/v1/tickets", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["ticket"])
