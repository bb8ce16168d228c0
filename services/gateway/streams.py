"""Streams: what each WebSocket client receives, in the catalog order; the feed and hub that fill them.

One order for everything. Every change to a product takes the next position in the catalog order
(``products.seq``, assigned under a lock at commit, so positions become visible in order). The
:class:`CatalogFeed` follows that order with the gateway's administrator token and hands each change to the
:class:`Hub`, which offers it to every :class:`Stream`. A client's backlog is read from the catalog's search
in the same order, with the client's own token, so backlog and live stream agree and one cursor covers both.

The seam between backlog and live. A stream attaches to the hub *before* its backlog is read and holds the
live changes that arrive meanwhile (``pending``). The backlog stops at the feed's position at attach time
(``start``): anything after it is in ``pending`` or still to come from the feed. Then the stream goes live
from ``start``: no gap (the feed delivers every change after ``start``) and no duplicate (each stream drops
changes at or before its position).

A slow client never delays anyone. Live messages go into a bounded per-stream queue without waiting; a
client whose queue is full is disconnected with close code 4008 and resumes with its last cursor. The
backlog, produced for one client only, waits for room instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.gateway.catalog_client import CatalogClient, CatalogRefused, CatalogUnavailable, Program, User
from skyport.api.catalog import Product
from skyport.cursor import decode_cursor, encode_cursor

log = structlog.get_logger("skyport.gateway")

PROTOCOL_VERSION = 1
CLOSE_REVOKED = 4001
CLOSE_TOO_SLOW = 4008
PAGE_SIZE = 500
MESSAGE_TYPES = ("hello", "file", "live", "programs", "heartbeat")
_HAND_OVER_EVERY = 0.01
"""Seconds of offering changes to streams before the writers get a turn (see :meth:`Hub.publish`)."""

_FILE_FIELDS = (
    "archive_id",
    "version",
    "mission",
    "propid",
    "obset",
    "level",
    "product",
    "intent",
    "original_filename",
    "instrument_name",
    "target_name",
    "observed_at",
    "night",
    "t_exptime",
    "s_ra",
    "s_dec",
    "size_bytes",
    "sha256",
    "public",
    "archived_at",
    "release_date",
)


def file_view(product: Product) -> dict[str, Any]:
    """The protocol's ``file`` object for a catalog product (see PROTOCOL.md)."""
    described = product.model_dump(mode="json", include=set(_FILE_FIELDS))
    view = {name: described[name] for name in _FILE_FIELDS}
    view["state"] = "public" if product.public else "reprocessed" if product.version > 1 else "new"
    view["download_url"] = f"/v1/files/{quote(product.archive_id, safe='')}?version={product.version}"
    return view


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


@dataclass(frozen=True)
class Change:
    """One change in the catalog order, and its live ``file`` message (the same text for every client)."""

    seq: int
    program: Program
    live_message: str

    @classmethod
    def of(cls, product: Product) -> Change:
        message = {"type": "file", "backlog": False, "cursor": product.cursor, "file": file_view(product)}
        return cls(decode_cursor(product.cursor), (product.mission, product.propid), dumps(message))


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge("skyport_gateway_streams", "WebSocket clients connected now.", registry=registry)
        self.messages = Counter(
            "skyport_gateway_messages_total",
            "Messages queued for WebSocket clients, by type.",
            ("type",),
            registry=registry,
        )
        self.disconnects = Counter(
            "skyport_gateway_disconnects_total",
            "WebSocket clients the gateway disconnected, by reason (too_slow, revoked).",
            ("reason",),
            registry=registry,
        )
        self.changes = Counter(
            "skyport_gateway_catalog_changes_total", "Changes read from the catalog order.", registry=registry
        )
        # Labelled children resolved once: the live path counts up to a million messages a second.
        self._by_type = {kind: self.messages.labels(kind) for kind in MESSAGE_TYPES}

    def sent(self, kind: str, count: int = 1) -> None:
        self._by_type[kind].inc(count)


class Stream:
    """One WebSocket client: what it may see, where it is in the catalog order, and its outgoing queue."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user: User,
        token: str,
        *,
        selection: frozenset[Program] | None,
        night: date | None,
        queue_limit: int,
        metrics: GatewayMetrics,
        abort: Callable[[], None],
    ) -> None:
        self.ws = ws
        self.user = user
        self.token = token
        self.selection = selection
        self.night = night
        """The night whose backlog the stream sends; None: tonight at each file's own site."""
        self.visible: frozenset[Program] = frozenset()
        self.set_user(user)
        self.position = 0
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_limit)
        self.queue_limit = queue_limit
        self.pending: list[Change] | None = []
        self.metrics = metrics
        self.closing = False
        self._abort = abort

    def set_user(self, user: User) -> None:
        """What the catalog says of the token now: the stream carries those of its programs that were asked for."""
        self.user = user
        self.visible = user.programs if self.selection is None else user.programs & self.selection

    def memberships(self) -> list[dict[str, Any]]:
        return [m.as_json() for m in self.user.memberships if m.program in self.visible]

    @property
    def cursor(self) -> str:
        return encode_cursor(self.position)

    # --- live (called by the hub; never waits) -------------------------------------------------------------

    def offer(self, change: Change) -> bool:
        """Take a live change; True when a message was queued for the client (the hub counts them)."""
        if self.closing:
            return False
        if self.pending is not None:
            self.pending.append(change)
            if len(self.pending) > self.queue_limit:
                self.close_too_slow()
            return False
        return self._deliver(change)

    def _deliver(self, change: Change) -> bool:
        if change.seq <= self.position:
            return False
        self.position = change.seq
        return change.program in self.visible and self._queue(change.live_message)

    def send(self, message: str, kind: str) -> None:
        """Queue a message without waiting; a client that cannot keep up is disconnected."""
        if self._queue(message):
            self.metrics.sent(kind)

    def _queue(self, message: str) -> bool:
        if self.closing:
            return False
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.close_too_slow()
            return False
        return True

    def heartbeat(self) -> None:
        if self.pending is None:
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            self.send(dumps({"type": "heartbeat", "time": now, "cursor": self.cursor}), "heartbeat")

    # --- backlog (one client's own; waits for room) --------------------------------------------------------

    async def put(self, message: dict[str, Any]) -> None:
        await self.queue.put(dumps(message))
        self.metrics.sent(message["type"])

    def go_live(self, start: int) -> None:
        """The backlog up to ``start`` is queued: send ``live``, then the changes held meanwhile."""
        self.position = max(self.position, start)
        self.send(dumps({"type": "live", "cursor": self.cursor}), "live")
        pending, self.pending = self.pending or [], None
        self.metrics.sent("file", sum(self._deliver(change) for change in pending))

    # --- closing -----------------------------------------------------------------------------------------

    def close_too_slow(self) -> None:
        self.metrics.disconnects.labels("too_slow").inc()
        log.warning("disconnecting a slow client", username=self.user.username, waiting=self.queue.qsize())
        self.close(CLOSE_TOO_SLOW, f"too slow: more than {self.queue_limit} messages waited; resume with your cursor")

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # A client too slow to read may not read the close frame either: give it a moment, then cut it off.
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except (TimeoutError, ConnectionError):
            self._abort()

    async def write(self) -> None:
        """Send the queue to the client until the connection ends (the handler cancels this task)."""
        while True:
            message = await self.queue.get()
            await self.ws.send_str(message)


class Hub:
    """Every connected stream; offers each change to all of them and applies membership changes."""

    def __init__(self, client: CatalogClient, metrics: GatewayMetrics) -> None:
        self.client = client
        self.metrics = metrics
        self.streams: set[Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, stream: Stream) -> None:
        self.streams.add(stream)
        self.metrics.streams.set(len(self.streams))

    def detach(self, stream: Stream) -> None:
        self.streams.discard(stream)
        self.metrics.streams.set(len(self.streams))

    async def publish(self, changes: Iterable[Change]) -> None:
        """Offer each change to every stream, then let the writers run before the next one.

        Handing over to the writers every few milliseconds matters for bursts (a release of thousands of
        files): the first clients get the first changes at once instead of after the whole page has been
        queued for everyone, and the writers still send many messages per turn.
        """
        handed_over = time.monotonic()
        for change in changes:
            self.metrics.changes.inc()
            self.metrics.sent("file", sum(stream.offer(change) for stream in list(self.streams)))
            if time.monotonic() - handed_over >= _HAND_OVER_EVERY:
                await asyncio.sleep(0)  # the writers send what is queued so far
                handed_over = time.monotonic()

    def heartbeat(self) -> None:
        for stream in list(self.streams):
            stream.heartbeat()

    def access_changed(self, username: str, program: Program, change: str) -> None:
        """A membership changed: a removal takes effect now, then every stream of the user asks the catalog."""
        for stream in [s for s in self.streams if s.user.username == username]:
            if change == "revoked":
                stream.visible = stream.visible - {program}
            task = asyncio.get_running_loop().create_task(self._refresh(stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def recheck(self, spread: float) -> None:
        """Ask the catalog again about every connected token (once per token): a revoked token is cut off.

        Revoking a token announces nothing (unlike a membership change), so this periodic look is what ends
        the streams of a revoked token, within ``SKYPORT_GATEWAY_RECHECK_INTERVAL`` seconds. The questions
        are spread evenly over ``spread`` seconds, so that a thousand clients are no burst for the catalog.
        """
        by_token: dict[str, list[Stream]] = {}
        for stream in self.streams:
            by_token.setdefault(stream.token, []).append(stream)
        pause = spread / max(1, len(by_token))
        for token, streams in by_token.items():
            await asyncio.sleep(pause)
            streams = [s for s in streams if s in self.streams]
            if not streams:
                continue
            try:
                user = await self.client.user(token)
            except (CatalogUnavailable, CatalogRefused) as exc:
                log.warning("could not recheck a token", username=streams[0].user.username, error=str(exc))
                continue
            for stream in streams:
                if user is None or user.programs != stream.user.programs:
                    await self._apply(stream, user)

    async def _refresh(self, stream: Stream) -> None:
        try:
            user = await self.client.user(stream.token)
        except (CatalogUnavailable, CatalogRefused) as exc:
            # The removal (if it was one) already took effect; a grant shows after the client reconnects.
            log.warning("could not refresh a client's programs", username=stream.user.username, error=str(exc))
            return
        await self._apply(stream, user)

    async def _apply(self, stream: Stream, user: User | None) -> None:
        """What the catalog now says of the stream's token: cut it off, or update its programs."""
        if user is None:
            self.metrics.disconnects.labels("revoked").inc()
            stream.close(CLOSE_REVOKED, "your token was revoked: sign in again")
            return
        before = stream.visible
        stream.set_user(user)
        stream.send(dumps({"type": "programs", "programs": stream.memberships(), "cursor": stream.cursor}), "programs")
        added = stream.visible - before
        if added and stream.pending is None:
            try:
                await send_backlog(self.client, stream, up_to=stream.position, programs=added)
            except (CatalogUnavailable, CatalogRefused) as exc:
                log.warning("could not send a granted program's night", username=stream.user.username, error=str(exc))
                stream.close(1011, "the catalog is unavailable; reconnect with your cursor")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def send_backlog(
    client: CatalogClient,
    stream: Stream,
    *,
    up_to: int,
    after: str | None = None,
    programs: frozenset[Program] | None = None,
) -> None:
    """Queue the stream's backlog, in catalog order, up to position ``up_to``.

    After ``after`` (a cursor) when given, else the stream's night; of ``programs`` (default: all the stream
    may see). Read with the user's own token, so the catalog's access rule decides what is in it.
    """
    wanted = stream.visible if programs is None else programs & stream.visible
    if not wanted:
        return
    params: list[tuple[str, str]] = [("limit", str(PAGE_SIZE))]
    params += [("mission", m) for m in sorted({m for m, _ in wanted})]
    params += [("propid", p) for p in sorted({p for _, p in wanted})]
    if after is None:
        # The catalog decides which night a file is of (skyport.nights, the mission's site): the live
        # messages carry the same ``night``, so backlog, live stream and search always agree.
        params.append(("night", "tonight" if stream.night is None else stream.night.isoformat()))
    cursor = after
    while True:
        page = await client.search(stream.token, params + ([("cursor", cursor)] if cursor else []))
        for product in page.products:
            if decode_cursor(product.cursor) > up_to:
                return
            if (product.mission, product.propid) in wanted and not stream.closing:
                await stream.put(
                    {"type": "file", "backlog": True, "cursor": product.cursor, "file": file_view(product)}
                )
        if not page.more or stream.closing:
            return
        cursor = page.next_cursor


class CatalogFeed:
    """Follows the catalog order with the gateway's token and publishes each change to the hub.

    Dataset events wake it (:meth:`wake`); it also looks every ``poll_interval`` seconds, so that a lost
    wake-up delays a change but never loses it.
    """

    def __init__(self, client: CatalogClient, hub: Hub, *, poll_interval: float) -> None:
        self.client = client
        self.hub = hub
        self.poll_interval = poll_interval
        self.position: int | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                if self.position is None:
                    self.position = decode_cursor(await self.client.position())
                    log.info("following the catalog order", cursor=encode_cursor(self.position))
                await self.catch_up()
                delay = 0.5
            except CatalogUnavailable as exc:
                log.warning("the catalog is unavailable; trying again", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def catch_up(self) -> None:
        """Publish every change after the feed's position, page by page."""
        assert self.position is not None
        while True:
            self._wake.clear()
            page = await self.client.changes(encode_cursor(self.position), PAGE_SIZE)
            changes = [Change.of(product) for product in page.products]
            if changes:
                self.position = changes[-1].seq
                await self.hub.publish(changes)
            if not page.more:
                return
