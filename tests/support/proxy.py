"""A TCP proxy on localhost that a test can freeze, to make a server look hung to its client."""

from __future__ import annotations

import asyncio
import contextlib


class FreezableProxy:
    """Forwards 127.0.0.1:<port> to a server; while frozen, nothing from the server reaches the client.

    With ``corrupt_at``, the byte at that offset of the first client connection that sends so much is
    flipped once on its way to the server: corruption in transit, which only a checksum can catch.
    """

    def __init__(self, target_host: str, target_port: int, *, corrupt_at: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.corrupt_at = corrupt_at
        self.corrupted = False
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for pipe in (self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool) -> None:
        sent = 0
        try:
            while data := await reader.read(65536):
                if from_server:
                    await self._flowing.wait()
                elif self.corrupt_at is not None and not self.corrupted and sent <= self.corrupt_at < sent + len(data):
                    flipped = bytearray(data)
                    flipped[self.corrupt_at - sent] ^= 0xFF
                    data = bytes(flipped)
                    self.corrupted = True
                sent += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
