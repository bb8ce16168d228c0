"""A real SMTP server in the test's process (aiosmtpd), keeping what it accepts, for the notifier's tests."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from aiohttp.test_utils import unused_port
from aiosmtpd.controller import Controller


class Mailbox:
    """An SMTP server's handler that keeps what it accepts; ``reply`` says what it answers instead (a 4xx, 5xx);
    ``stall`` holds the answer to DATA back (the server runs in its own thread, hence the polling) until it is
    cleared, and then takes nothing: a server that went silent."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.reply: str | None = None
        self.stall = False
        self.stalled = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stall:
            self.stalled += 1
            # The flag is cleared from the test's thread and loop, which an asyncio.Event of this loop is not for.
            while self.stall:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            return "421 4.3.2 going away"
        if self.reply is not None:
            return self.reply
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK: queued"


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """An aiosmtpd server on a free port of 127.0.0.1 (its own thread), and what it keeps."""
    box = Mailbox()
    port = unused_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        box.stall = False
        controller.stop()
