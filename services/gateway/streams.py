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

A burst costs the gateway per change, not per change and client. The feed reads the changes a page at a
time and the hub offers each page to every stream at once as a :class:`ChangeBatch`: the page is grouped by
program once, so a stream's share is a lookup per program it carries; each change is serialised once, and
the messages of a share are built once and the same bytes queued for every stream with that share. A client
that speaks protocol 2 gets a share of many changes as a few ``files`` messages instead of a message each.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.gateway.catalog_client import CatalogClient, CatalogRefused, CatalogUnavailable, Program, User
from skyport.api.catalog import Product
from skyport.cursor import decode_cursor, encode_cursor

log = structlog.get_logger("skyport.gateway")

PROTOCOL_VERSION = 2
"""The newest protocol the gateway speaks; a client asks for one with ``?protocol=`` (1 when it does not)."""
BATCHES_FROM = 2
"""The first protocol in which changes that come together may come as one ``files`` message."""
CLOSE_REVOKED = 4001
CLOSE_TOO_SLOW = 4008
PAGE_SIZE = 500
FIRST_PAGE_SIZE = 10
"""Changes read first after a wake-up: the catalog answers for a few at once, so the first clients hear of a
burst while the rest is read."""
FILES_PER_MESSAGE = 100
"""At most this many files in one ``files`` message (about 70 kB: well under any WebSocket library's limit)."""
MESSAGE_TYPES = ("hello", "file", "files", "live", "programs", "heartbeat")
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


def dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def file_item(product: Product) -> str:
    """A product as one item of a ``files`` message, ``{"cursor": ..., "file": ...}``, serialised."""
    return dumps({"cursor": product.cursor, "file": file_view(product)})


def file_message(item: str, *, backlog: bool) -> bytes:
    """The ``file`` message of an item: the same text with its type in front (one serialisation for both)."""
    return ('{"type":"file","backlog":' + ("true," if backlog else "false,") + item[1:]).encode()


def files_messages(items: Sequence[str], cursors: Sequence[str], *, backlog: bool) -> list[bytes]:
    """Items in order as ``files`` messages of up to FILES_PER_MESSAGE each; a message's cursor is its last file's."""
    messages = []
    for first in range(0, len(items), FILES_PER_MESSAGE):
        chunk = items[first : first + FILES_PER_MESSAGE]
        cursor = cursors[first + len(chunk) - 1]
        head = '{"type":"files","backlog":' + ("true" if backlog else "false") + ',"cursor":' + dumps(cursor)
        messages.append((head + ',"files":[' + ",".join(chunk) + "]}").encode())
    return messages


@dataclass(frozen=True)
class Change:
    """One change in the catalog order, serialised once for every client.

    ``item`` is its entry in a ``files`` message and ``live_message`` its own ``file`` message, built from
    the same text.
    """

    seq: int
    program: Program
    cursor: str
    item: str
    live_message: bytes

    @classmethod
    def of(cls, product: Product) -> Change:
        item = file_item(product)
        program = (product.mission, product.propid)
        return cls(decode_cursor(product.cursor), program, product.cursor, item, file_message(item, backlog=False))


class ChangeBatch:
    """Changes read together from the catalog order (a page), offered to every stream at once.

    The changes are grouped by program once, so that a stream's share is a lookup per program, never a look
    at every change for every stream; and the messages of a share are built once, then the same bytes are
    queued for every stream that has that share (a thousand members of one program: one build).
    """

    def __init__(self, changes: Sequence[Change]) -> None:
        if not changes:
            raise ValueError("a batch holds at least one change")
        self.changes = list(changes)
        self.first = self.changes[0].seq
        self.last = self.changes[-1].seq
        self.by_program: dict[Program, list[Change]] = {}
        for change in self.changes:
            self.by_program.setdefault(change.program, []).append(change)
        self._built: dict[tuple[tuple[Program, ...], bool], tuple[str, list[bytes]]] = {}

    def messages(self, visible: frozenset[Program], after: int, *, batched: bool) -> tuple[str, list[bytes]]:
        """The live messages, and their type, of this batch's changes after position ``after`` in ``visible``.

        ``batched``: as ``files`` messages (protocol 2) when there is more than one change, else one ``file``
        message per change.
        """
        # Whichever is smaller is walked: a user may carry many programs, a page may hold many.
        if len(visible) < len(self.by_program):
            programs = tuple(sorted(p for p in visible if p in self.by_program))
        else:
            programs = tuple(sorted(p for p in self.by_program if p in visible))
        if not programs:
            return "file", []
        whole = after < self.first  # always, except for the batches held while a backlog was read
        key = (programs, batched)
        if whole and key in self._built:
            return self._built[key]
        if len(programs) == 1:
            share = self.by_program[programs[0]]
        else:
            share = list(heapq.merge(*(self.by_program[p] for p in programs), key=lambda c: c.seq))
        if not whole:
            share = [c for c in share if c.seq > after]
        if batched and len(share) > 1:
            built = "files", files_messages([c.item for c in share], [c.cursor for c in share], backlog=False)
        else:
            built = "file", [c.live_message for c in share]
        if whole:
            self._built[key] = built
        return built


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
        protocol: int = 1,
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
        self.protocol = protocol
        self.batched = protocol >= BATCHES_FROM
        """Changes that come together go as ``files`` messages (the client speaks protocol 2 or later)."""
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_limit)
        self.queue_limit = queue_limit
        self.pending: list[ChangeBatch] | None = []
        self._held = 0
        """Changes in ``pending``."""
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

    def offer(self, batch: ChangeBatch) -> None:
        """Take a batch of live changes: queue the client's share, or hold it while the backlog is read."""
        if self.closing:
            return
        if self.pending is not None:
            self.pending.append(batch)
            self._held += len(batch.changes)
            if self._held > self.queue_limit:
                self.close_too_slow()
            return
        self._deliver(batch)

    def _deliver(self, batch: ChangeBatch) -> None:
        if batch.last <= self.position:
            return
        after, self.position = self.position, batch.last
        kind, messages = batch.messages(self.visible, after, batched=self.batched)
        queued = 0
        for message in messages:
            if not self._queue(message):
                break
            queued += 1
        if queued:
            self.metrics.sent(kind, queued)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message without waiting; a client that cannot keep up is disconnected."""
        if self._queue(dumps(message).encode()):
            self.metrics.sent(message["type"])

    def _queue(self, message: bytes) -> bool:
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
            self.send({"type": "heartbeat", "time": now, "cursor": self.cursor})

    # --- backlog (one client's own; waits for room) --------------------------------------------------------

    async def put(self, message: dict[str, Any]) -> None:
        await self.queue.put(dumps(message).encode())
        self.metrics.sent(message["type"])

    async def put_backlog(self, products: Sequence[Product]) -> None:
        """Queue backlog files in order: ``files`` messages for a client of protocol 2, else one ``file`` each."""
        items = [file_item(p) for p in products]
        if self.batched and len(items) > 1:
            kind, messages = "files", files_messages(items, [p.cursor for p in products], backlog=True)
        else:
            kind, messages = "file", [file_message(item, backlog=True) for item in items]
        for message in messages:
            if self.closing:
                return
            await self.queue.put(message)
            self.metrics.sent(kind)

    def go_live(self, start: int) -> None:
        """The backlog up to ``start`` is queued: send ``live``, then the changes held meanwhile."""
        self.position = max(self.position, start)
        self.send({"type": "live", "cursor": self.cursor})
        pending, self.pending, self._held = self.pending or [], None, 0
        for batch in pending:
            self._deliver(batch)  # drops what the backlog held, to the change

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
            # The bytes are shared by every client with the same share: sent as they are, never encoded per client.
            await self.ws.send_frame(message, WSMsgType.TEXT)


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

    async def publish(self, changes: Sequence[Change]) -> None:
        """Offer the changes, as one batch, to every stream, letting the writers run every few milliseconds.

        Handing over to the writers as it goes matters for bursts (a release of thousands of files) to clients
        of protocol 1, whose share is a message per change: the first clients get theirs at once instead of
        after everyone's has been queued, and the writers still send many messages per turn.
        """
        if not changes:
            return
        batch = ChangeBatch(changes)
        self.metrics.changes.inc(len(batch.changes))
        handed_over = time.monotonic()
        for stream in list(self.streams):
            stream.offer(batch)
            if time.monotonic() - handed_over >= _HAND_OVER_EVERY:
                await asyncio.sleep(0)  # the writers send what is queued so far
                handed_over = time.monotonic()
        # The writers take this batch before the next is offered (it may be read already): a client's queue
        # holds about a batch at a time, not a whole release.
        await asyncio.sleep(0)

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
        stream.send({"type": "programs", "programs": stream.memberships(), "cursor": stream.cursor})
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
        ahead = [p for p in page.products if decode_cursor(p.cursor) <= up_to]
        await stream.put_backlog([p for p in ahead if (p.mission, p.propid) in wanted])
        if len(ahead) < len(page.products) or not page.more or stream.closing:
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
        """Publish every change after the feed's position, page by page.

        The first page is small (FIRST_PAGE_SIZE), so that the first clients hear of a burst as soon as the
        catalog can answer for a few changes; and each next page is read while the hub hands out the last
        one (the catalog works in a process of its own). Pages are still published one after the other, in
        the catalog order.
        """
        assert self.position is not None
        self._wake.clear()
        reading = asyncio.ensure_future(self.client.changes(encode_cursor(self.position), FIRST_PAGE_SIZE))
        try:
            while True:
                page = await reading
                changes = [Change.of(product) for product in page.products]
                if not changes:
                    return
                if page.more:
                    self._wake.clear()  # a wake-up from now on asks for a look past this next read
                    reading = asyncio.ensure_future(self.client.changes(changes[-1].cursor, PAGE_SIZE))
                self.position = changes[-1].seq
                await self.hub.publish(changes)
                if not page.more:
                    return
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, CatalogUnavailable, CatalogRefused):
                    await reading
