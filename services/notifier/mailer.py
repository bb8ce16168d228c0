"""Handing an email to the SMTP server (aiosmtplib), and what its answer means for the notice.

2xx: accepted. 4xx, or no answer (connection refused, timeout, a dropped connection): temporary, tried again
with back-off. 5xx: permanent, the channel is stopped and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol

import aiosmtplib

from services.notifier.settings import NotifierSettings

Outcome = Literal["accepted", "temporary", "permanent"]


@dataclass(frozen=True)
class SmtpResult:
    outcome: Outcome
    code: int | None
    response: str


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> SmtpResult: ...


def outcome_of(code: int | None) -> Outcome:
    if code is not None and 200 <= code < 300:
        return "accepted"
    return "permanent" if code is not None and 500 <= code < 600 else "temporary"


@contextlib.asynccontextmanager
async def _dropped_when_cancelled(client: aiosmtplib.SMTP) -> AsyncIterator[None]:
    """Connected for one message, then QUIT; but a send cancelled (the notifier stopping) drops the connection at
    once: aiosmtplib would say QUIT and wait for the answer, up to ``smtp_timeout``, to a server that may be the
    reason for stopping. The email's fate is then unknown to the notifier, whose claim rolls back (README)."""
    await client.connect()
    try:
        yield
    except (asyncio.CancelledError, ConnectionError, TimeoutError, aiosmtplib.SMTPServerDisconnected):
        client.close()  # nobody to say QUIT to, or no time to wait for its answer
        raise
    except BaseException:
        await _quietly_quit(client)
        raise
    await _quietly_quit(client)


async def _quietly_quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


class SmtpMailer:
    """The SMTP server of the settings: host, port, STARTTLS or TLS, credentials."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> SmtpResult:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            username=s.smtp_username,
            password=None if s.smtp_password is None else s.smtp_password.get_secret_value(),
            timeout=s.smtp_timeout,
        )
        try:
            async with _dropped_when_cancelled(client):
                refused, response = await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return SmtpResult(outcome_of(first.code), first.code, f"{first.code} {first.message}")
        except aiosmtplib.SMTPResponseException as exc:
            return SmtpResult(outcome_of(exc.code), exc.code, f"{exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return SmtpResult("temporary", None, f"no answer from {s.smtp_host}:{s.smtp_port}: {exc!r}")
        if refused:
            recipient, (code, text) = next(iter(refused.items()))
            return SmtpResult(outcome_of(code), code, f"{code} {text} ({recipient})")
        return SmtpResult("accepted", 250, response)
