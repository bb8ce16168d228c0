"""WebSocket clients of the gateway in a process of their own, for ``bench/e2e.py``: each notes when every message came.

``bench/e2e.py`` starts one or more of these processes (``python bench/stream_clients.py``) so that the clients'
own work (reading frames, parsing them) runs outside the benchmark's process, which keeps the clock of the
catalog's commits and must not be starved. It is not meant to be run by hand.

Talking to it, one JSON document per line:

- stdin, first line: ``{"gateway": URL, "tokens": [...], "params": [[name, value], ...], "concurrency": n,
  "compress": bool}`` (``params`` may hold ``protocol``: with 2, live changes that come together arrive as
  ``files`` messages) (tokens on stdin, never on the command line where ``ps`` shows them; ``compress`` asks for
  permessage-deflate, as browsers do). One client per token is connected to
  ``GET /v1/stream`` with ``Authorization: Bearer``, at most ``concurrency`` handshakes at once; when all are
  live (or have failed), the process writes ``{"ready": connected, "live": n, "failed": [...], "seconds": s}``.
- stdin ``count``: answered with ``{"files": n, "closed": n}``, the live files received so far by all clients
  together (in ``file`` or ``files`` messages) and how many connections have ended.
- stdin ``stop PATH``: every client closes; the results go to PATH as JSON (per client: its live ``file``
  messages as ``[cursor, arrival]``, whether the server ended it first and with which close code, and its other
  messages by type; for the process:
  ``archive_ids``, cursor -> archive ID), then ``{"done": true}``.

The arrival time is ``time.time()`` when the client's reader has the frame, the same clock as the benchmark's.
A live ``file`` or ``files`` message is recognised by its first bytes and kept as it came, with its arrival; its
files are counted at once (``str.count``, for ``count``) and read only at ``stop``, after the timed phases, by
slicing out each cursor and archive ID (a fraction of ``json.loads``), so that the clients' bookkeeping takes no
CPU from the services while they are timed (a burst brings hundreds of thousands of files to two cores). A file
of a ``files`` message arrived with its message. Any other message is parsed in full on arrival, and a kept one
laid out otherwise at ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

_LIVE_FILE = '{"type":"file","backlog":false,"cursor":"'
_LIVE_FILES = '{"type":"files","backlog":false,"cursor":"'
_ITEM = '{"cursor":"'  # a file of a files message; never inside a JSON string, whose quotes are escaped
_ARCHIVE_ID = '"archive_id":"'


class Client:
    """One connection: its live ``file`` messages (cursor, arrival) and a count of the rest by type."""

    def __init__(self, archive_ids: dict[str, str]) -> None:
        self.files: list[tuple[str, float]] = []
        """(cursor, arrival) of each live file, filled from ``kept`` by :meth:`settle`."""
        self.kept: list[tuple[str, float]] = []
        """Live ``file`` and ``files`` messages as they came, with their arrival."""
        self._kept_files = 0
        self.others: Counter[str] = Counter()
        self.archive_ids = archive_ids  # shared by the process's clients: cursor -> archive ID
        self.close_code: int | None = None
        self.error: str | None = None
        self.live = asyncio.Event()
        self.ended = asyncio.Event()
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def run(
        self, session: aiohttp.ClientSession, url: str, token: str, params: list[tuple[str, str]], compress: int
    ) -> None:
        try:
            self.ws = await session.ws_connect(
                url, params=params, headers={"Authorization": f"Bearer {token}"}, heartbeat=None, compress=compress
            )
        except Exception as exc:  # a refused handshake is a result to report, not a crash
            self.error = repr(exc)[:200]
            self.live.set()
            self.ended.set()
            return
        try:
            async for message in self.ws:
                arrival = time.time()
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                self._note(message.data, arrival)
        finally:
            self.close_code = self.ws.close_code
            self.live.set()
            self.ended.set()

    def _note(self, text: str, arrival: float) -> None:
        if text.startswith(_LIVE_FILE):
            self.kept.append((text, arrival))
            self._kept_files += 1
            return
        if text.startswith(_LIVE_FILES):
            self.kept.append((text, arrival))
            self._kept_files += text.count(_ITEM)
            return
        self._parse(text, arrival)

    def settle(self) -> None:
        """Read the kept live messages into ``files`` (after the timed phases)."""
        for text, arrival in self.kept:
            if not (text.startswith(_LIVE_FILES) and self._note_files(text, arrival)):
                self._note_file(text, arrival)
        self.kept, self._kept_files = [], 0

    @property
    def received(self) -> int:
        """Live files received so far, read or kept."""
        return len(self.files) + self._kept_files

    def _note_file(self, text: str, arrival: float) -> None:
        if text.startswith(_LIVE_FILE):
            start = len(_LIVE_FILE)
            end = text.find('"', start)
            at = text.find(_ARCHIVE_ID, end)
            if end > 0 and at > 0:
                cursor = text[start:end]
                self.files.append((cursor, arrival))
                if cursor not in self.archive_ids:
                    at += len(_ARCHIVE_ID)
                    self.archive_ids[cursor] = text[at : text.find('"', at)]
                return
        self._parse(text, arrival)

    def _parse(self, text: str, arrival: float) -> None:
        message = json.loads(text)
        kind = str(message.get("type"))
        if kind == "file" and message.get("backlog") is False:
            self.files.append((message["cursor"], arrival))
            self.archive_ids.setdefault(message["cursor"], message["file"]["archive_id"])
            return
        if kind == "files" and message.get("backlog") is False:
            for item in message["files"]:
                self.files.append((item["cursor"], arrival))
                self.archive_ids.setdefault(item["cursor"], item["file"]["archive_id"])
            return
        self.others["backlog" if kind in ("file", "files") else kind] += 1
        if kind == "live":
            self.live.set()

    def _note_files(self, text: str, arrival: float) -> bool:
        """Note every file of a live ``files`` message by slicing; False when it is laid out otherwise."""
        at = text.find('"files":[', len(_LIVE_FILES))
        noted: list[tuple[str, str]] = []
        while at > 0:
            at = text.find(_ITEM, at)
            if at < 0:
                break
            start = at + len(_ITEM)
            end = text.find('"', start)
            found = text.find(_ARCHIVE_ID, end)
            if end < 0 or found < 0:
                return False
            found += len(_ARCHIVE_ID)
            at = text.find('"', found)
            noted.append((text[start:end], text[found:at]))
        if not noted:
            return False
        for cursor, archive_id in noted:
            self.files.append((cursor, arrival))
            self.archive_ids.setdefault(cursor, archive_id)
        return True


def say(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per connection
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    config = json.loads(await stdin.readline())
    url = f"{config['gateway']}/v1/stream"
    params = [(str(k), str(v)) for k, v in config["params"]]
    archive_ids: dict[str, str] = {}
    clients = [Client(archive_ids) for _ in config["tokens"]]
    handshakes = asyncio.Semaphore(int(config.get("concurrency", 50)))
    compress = 15 if config.get("compress") else 0  # permessage-deflate, as browsers ask for it
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def connect(client: Client, token: str) -> None:
            async with handshakes:
                task = loop.create_task(client.run(session, url, token, params, compress))
                tasks.append(task)
                await client.live.wait()  # the next handshake waits until this stream is live (or failed)

        started = time.perf_counter()
        await asyncio.gather(*(connect(c, t) for c, t in zip(clients, config["tokens"], strict=True)))
        say(
            {
                "ready": sum(c.ws is not None for c in clients),
                "live": sum(c.others["live"] > 0 for c in clients),
                "failed": sorted({c.error for c in clients if c.error}),
                "seconds": time.perf_counter() - started,
            }
        )
        while line := (await stdin.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "count":
                say({"files": sum(c.received for c in clients), "closed": sum(c.ended.is_set() for c in clients)})
            elif command == "stop":
                ended_early = [c.ended.is_set() for c in clients]  # the server closed them, or they failed
                for client in clients:
                    if client.ws is not None and not client.ws.closed:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(client.ws.close(), 5)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for client in clients:
                    client.settle()
                results = {
                    "clients": [
                        {
                            "files": c.files,
                            "ended_early": early,
                            "close_code": c.close_code if early else None,
                            "others": dict(c.others),
                            "error": c.error,
                        }
                        for c, early in zip(clients, ended_early, strict=True)
                    ],
                    "archive_ids": archive_ids,
                }
                await asyncio.to_thread(Path(argument).write_text, json.dumps(results))
                say({"done": True})
                return


if __name__ == "__main__":
    asyncio.run(main())
