"""Webhooks: a notice POSTed as signed JSON to the subscriber's receiver, and what its answer means for the notice.

The body is the email's JSON attachment (``{"notices": [...]}``) with the delivery's key. It is signed with the
subscription's own secret: ``Skyport-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (the time
is signed so that a receiver can refuse an old body replayed). ``Idempotency-Key`` is the delivery's key, the same
when the same notices are sent again after a crash, so a receiver can drop a copy.

2xx: accepted. No answer (refused, timeout, dropped), 5xx or 429: temporary, tried again with back-off, or after
the receiver's ``Retry-After``. 410 Gone: permanent, the channel is stopped and says why. Another 4xx (or a
redirect, which is not followed: the signed body goes only where the subscriber said): the receiver refused this
body; the delivery fails and says why, the channel goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

SIGNATURE_HEADER = "Skyport-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_RESPONSE_KEPT = 300  # characters of a receiver's answer kept in the ledger

Outcome = Literal["accepted", "temporary", "permanent", "rejected"]


def new_secret() -> str:
    """A subscription's signing secret, shown to its owner once, when the subscription is made."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Skyport-Signature`` header of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None, tolerance: float = 300.0) -> bool:
    """What a receiver does (the README shows the same in a few lines): the HMAC matches and the time is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def check_url(url: str, *, allow_http: bool) -> str:
    """A receiver's URL as kept, or ValueError: https (http too when the settings allow it), with a host."""
    parts = urlsplit(url.strip())
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise ValueError(
            "a webhook URL must be https" + ("" if allow_http else " (http only in development)") + f", not {url!r}"
        )
    if not parts.hostname:
        raise ValueError(f"a webhook URL needs a host: {url!r}")
    return url.strip()


@dataclass(frozen=True)
class HookResult:
    outcome: Outcome
    status: int | None  # the receiver's HTTP status; None: no answer
    response: str
    retry_after: float | None = None  # seconds the receiver asked us to wait (Retry-After), if it did


def outcome_of(status: int) -> Outcome:
    if 200 <= status < 300:
        return "accepted"
    if status == 410:
        return "permanent"
    if status == 429 or status >= 500:
        return "temporary"
    return "rejected"


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class WebhookSender:
    """POSTs signed bodies with one HTTP session (the lifespan's), each within ``timeout`` seconds."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.wall_clock = wall_clock
        """Signing time: the real one even when the delivery loop's clock is moved by a test."""

    async def post(self, url: str, secret: str, idempotency_key: str, body: bytes) -> HookResult:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Skyport-Notifier",
            IDEMPOTENCY_HEADER: idempotency_key,
            SIGNATURE_HEADER: signature(secret, int(self.wall_clock()), body),
        }
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                text = (await response.text(errors="replace"))[:MAX_RESPONSE_KEPT]
                status = response.status
                wait = retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return HookResult("temporary", None, f"no answer from {urlsplit(url).netloc}: {exc!r}"[:MAX_RESPONSE_KEPT])
        reason = f"HTTP {status}" + (f": {text.strip()}" if text.strip() else "")
        return HookResult(outcome_of(status), status, reason, wait)
