"""Webhooks: a notice POSTed as signed JSON to the subscriber's receiver, and what its answer means for the notice.

The body is the email's JSON attachment (``{"notices": [...]}``) with the delivery's key. It is signed with the
subscription's own secret: ``Skyport-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (the time
is signed so that a receiver can refuse an old body replayed). ``Idempotency-Key`` is the delivery's key, the same
when the same notices are sent again after a crash, so a receiver can drop a copy.

2xx: accepted. No answer (refused, timeout, dropped), 5xx or 429: temporary, tried again with back-off, or after
the receiver's ``Retry-After``. 410 Gone: permanent, the channel is stopped and says why. Another 4xx (or a
redirect, which is not followed: the signed body goes only where the subscriber said): the receiver refused this
body; the delivery fails and says why, the channel goes on.

**Only public receivers.** A webhook URL is a request the notifier makes on a subscriber's behalf, from inside the
archive's network: a host that resolves to a loopback, private, link-local, multicast, reserved or otherwise
non-global address is refused (SSRF), when the subscription is made or changed (:func:`check_receiver`) and again
before each POST, since DNS can change: the POST's own connections go through :class:`PublicResolver`, so the
address checked is the address connected to. ``SKYPORT_NOTIFIER_WEBHOOK_ALLOW_HTTP`` (development and tests, whose
receivers are on 127.0.0.1) lifts both rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

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


Resolve = Callable[[str], Awaitable[list[str]]]
"""A host's addresses (the system's resolver; a test's fake)."""


async def system_resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def not_public(address: str) -> str | None:
    """Why ``address`` is no place to send a webhook (``"loopback"``, ``"private"``, ...), or None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    # The narrowest first: Python counts link-local, reserved and unspecified addresses as private too.
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


class NotPublic(ValueError):
    """A receiver's host that is not on the public internet."""


class Unresolved(ValueError):
    """A receiver's host that cannot be resolved now."""


async def check_receiver(url: str, *, allow_http: bool, resolve: Resolve = system_resolve) -> str:
    """A receiver's URL as kept (:func:`check_url`), whose host resolves only to public addresses; NotPublic or
    Unresolved (ValueErrors) otherwise. ``allow_http`` (development) skips the address check: its receivers are
    local."""
    url = check_url(url, allow_http=allow_http)
    if allow_http:
        return url
    host = urlsplit(url).hostname or ""
    try:
        addresses = [host] if _is_address(host) else await resolve(host)
    except OSError as exc:
        raise Unresolved(f"the webhook host {host!r} cannot be resolved ({exc.strerror or exc})") from None
    if not addresses:
        raise Unresolved(f"the webhook host {host!r} has no address")
    for address in addresses:
        kind = not_public(address)
        if kind is not None:
            raise NotPublic(
                f"the webhook host {host!r} resolves to {address}, a {kind} address: a receiver must be on the "
                "public internet"
            )
    return url


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class PublicResolver(AbstractResolver):
    """The webhook session's resolver: a name that resolves to any non-public address is not connected to."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for result in results:
            kind = not_public(result["host"])
            if kind is not None:
                raise OSError(f"{host} resolves to {result['host']}, a {kind} address")
        return results

    async def close(self) -> None:
        await self.inner.close()


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
        allow_private: bool = True,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.wall_clock = wall_clock
        """Signing time: the real one even when the delivery loop's clock is moved by a test."""
        self.allow_private = allow_private
        self.resolve = resolve

    async def post(self, url: str, secret: str, idempotency_key: str, body: bytes) -> HookResult:
        if not self.allow_private:
            try:
                await check_receiver(url, allow_http=False, resolve=self.resolve)
            except Unresolved as exc:
                return HookResult("temporary", None, f"not sent: {exc}"[:MAX_RESPONSE_KEPT])
            except ValueError as exc:
                # Not this receiver's answer but ours (a host no longer public; an http:// URL kept while http was
                # allowed): the body is not sent, the delivery fails, the channel goes on.
                return HookResult("rejected", None, f"not sent: {exc}"[:MAX_RESPONSE_KEPT])
        return await self._post(url, secret, idempotency_key, body)

    async def _post(self, url: str, secret: str, idempotency_key: str, body: bytes) -> HookResult:
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
