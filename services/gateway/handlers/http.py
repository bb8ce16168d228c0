"""The gateway's HTTP doors: the observer page, tickets, the WebSocket stream, and the catalog's user API.

The protocol is described in ``services/gateway/PROTOCOL.md``. Authentication: ``Authorization: Bearer``
with a catalog token, or a ticket (``?ticket=``) for the stream and for downloads. The catalog says who a
token belongs to; the gateway keeps no user data of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import date
from pathlib import Path

import aiohttp
import structlog
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from services.gateway.catalog_client import CatalogClient, CatalogRefused, CatalogUnavailable, Program, User
from services.gateway.streams import (
    CLOSE_TOO_SLOW,
    PROTOCOL_VERSION,
    CatalogFeed,
    GatewayMetrics,
    Hub,
    Stream,
    send_backlog,
)
from services.gateway.tickets import Tickets
from skyport.api.errors import ErrorCode
from skyport.api.gateway import Ticket
from skyport.cursor import BadCursor, decode_cursor
from skyport.http import ApiError, bearer_token, json_errors, refuse_nul

log = structlog.get_logger("skyport.gateway")

STATIC = Path(__file__).resolve().parent.parent / "static"
_MAX_TOKEN = 512
_PROGRAM = re.compile(r"^([A-Za-z0-9_.-]{1,64})/([A-Za-z0-9_.-]{1,64})$")
# The catalog's user API, forwarded as it is: (method, path pattern). Only these: the catalog's other endpoints
# (administration, the change feed) are not the page's.
_CATALOG = (
    ("GET", re.compile(r"^/v1/me$")),
    ("GET", re.compile(r"^/v1/nights$")),
    ("GET", re.compile(r"^/v1/products(/[^/]+)?$")),
    ("GET", re.compile(r"^/v1/files/[^/]+$")),
    ("GET", re.compile(r"^/v1/programs/[^/]+/[^/]+/members$")),
    ("PUT", re.compile(r"^/v1/programs/[^/]+/[^/]+/members/[^/]+$")),
    ("DELETE", re.compile(r"^/v1/programs/[^/]+/[^/]+/members/[^/]+$")),
    ("POST", re.compile(r"^/v1/programs/[^/]+/[^/]+/release$")),
)
# Where each path goes: a prefix and everything below it to the service named (the catalog answers the rest).
# All of the notifier's HTTP API is for people (subscriptions, the inbox) or for the links in its emails
# (unsubscribe, a notice's download script), so it is forwarded whole and answers its own 404s and 405s.
_UPSTREAM_OF_PREFIX = (
    ("/v1/subscriptions", "notifier"),
    ("/v1/unsubscribe", "notifier"),
    ("/v1/inbox", "notifier"),
    ("/v1/notices", "notifier"),
)
_UNCONFIGURED = {
    "notifier": "notifications are not configured on this gateway (its SKYPORT_GATEWAY_NOTIFIER_URL is unset)"
}
# The gateway's own routes, for the Allow header of a 405 (the catch-all route below sees their other methods).
_OWN = (("POST", re.compile(r"^/v1/tickets$")), ("GET", re.compile(r"^/v1/stream$")))
_REQUEST_HEADERS = ("Range", "If-Range", "Content-Type", "Accept")
_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Content-Disposition",
    "Accept-Ranges",
    "Repr-Digest",
    "ETag",
    "Last-Modified",
    "WWW-Authenticate",
    "Allow",
)
_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Content-Security-Policy"] = _PAGE_POLICY
        response.headers["Cache-Control"] = "no-cache"
    return response


class GatewayApi:
    def __init__(
        self,
        client: CatalogClient,
        hub: Hub,
        feed: CatalogFeed,
        tickets: Tickets,
        metrics: GatewayMetrics,
        *,
        queue_limit: int,
        heartbeat: float,
        public_url: str | None = None,
        notifier_url: str | None = None,
    ) -> None:
        self.client = client
        self.hub = hub
        self.feed = feed
        self.tickets = tickets
        self.metrics = metrics
        self.queue_limit = queue_limit
        self.heartbeat = heartbeat
        self.public_url = public_url
        self.notifier_url = notifier_url

    def app(self) -> web.Application:
        app = web.Application(middlewares=[security_headers, json_errors(), refuse_nul], client_max_size=1 << 20)
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", STATIC)
        app.router.add_post("/v1/tickets", self.issue_ticket)
        app.router.add_get("/v1/stream", self.stream)
        app.router.add_route("*", "/v1/{tail:.*}", self.forward)
        app.on_shutdown.append(self._close_streams)
        return app

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    # --- authentication ------------------------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> str | None:
        token = bearer_token(request)
        if token is not None and len(token) > _MAX_TOKEN:
            raise ApiError(401, "the token is unknown or revoked")
        return token

    async def _user_of(self, token: str) -> User:
        try:
            user = await self.client.user(token)
        except CatalogUnavailable as exc:
            log.warning("cannot check a token: the catalog is unavailable", error=str(exc))
            raise ApiError(503, "the catalog is unavailable; try again in a moment") from None
        if user is None:
            raise ApiError(401, "the token is unknown or revoked")
        return user

    async def _authenticate(self, request: web.Request, *, ticket_allowed: bool) -> tuple[str, User]:
        token = self._bearer(request)
        if token is not None:
            return token, await self._user_of(token)
        ticket = request.query.get("ticket") if ticket_allowed else None
        if ticket is None:
            how = "'Authorization: Bearer <token>'" + (" or ?ticket=" if ticket_allowed else "")
            raise ApiError(401, f"sign in: send {how}")
        found = self.tickets.redeem(ticket)
        if found is None:
            raise ApiError(401, "the ticket is unknown, used or expired: get a new one (POST /v1/tickets)")
        return found.token, found.user

    async def issue_ticket(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            raise ApiError(401, "a ticket is issued for a token: send 'Authorization: Bearer <token>'")
        user = await self._user_of(token)
        try:
            ticket = self.tickets.issue(token, user)
        except OverflowError as exc:
            raise ApiError(503, str(exc)) from None
        answer = Ticket(ticket=ticket, expires_in=self.tickets.ttl)
        return web.Response(text=answer.model_dump_json(), status=201, content_type="application/json")

    # --- the stream -------------------------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        # No per-message compression: messages are small, and compressing each for a thousand clients would
        # cost more CPU than the bytes it saves. Pings are ours (_keep_alive), not aiohttp's heartbeat, which
        # drops a client that misses a pong without a close frame (1006 at the client).
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 12, compress=False)
        if not ws.can_prepare(request).ok:
            raise ApiError(
                400, "this address is a WebSocket: connect with a WebSocket client", code=ErrorCode.NOT_A_WEBSOCKET
            )
        night, after, selection, asked = _stream_parameters(request)
        # A client names the newest protocol it speaks; the gateway speaks the newest it can of those.
        protocol = min(asked, PROTOCOL_VERSION)
        if self.feed.position is None:
            raise ApiError(503, "the gateway is still connecting to the catalog; try again in a moment")
        token, user = await self._authenticate(request, ticket_allowed=True)
        # Without a night, the stream's backlog is tonight's at each file's own site; hello names the date.
        named_night = night or await self._tonight(user, selection)
        await ws.prepare(request)
        transport = request.transport
        stream = Stream(
            ws,
            user,
            token,
            selection=selection,
            night=night,
            queue_limit=self.queue_limit,
            metrics=self.metrics,
            abort=transport.abort if transport is not None else lambda: None,
            protocol=protocol,
        )
        start = self.feed.position
        self.hub.attach(stream)
        writer = asyncio.get_running_loop().create_task(stream.write())
        log.info(
            "client connected",
            username=user.username,
            night=str(night or "tonight"),
            resume=after is not None,
            protocol=protocol,
        )
        try:
            await stream.put(
                {
                    "type": "hello",
                    "protocol": protocol,
                    "user": user.username,
                    "night": named_night.isoformat(),
                    "programs": stream.memberships(),
                    "heartbeat": self.heartbeat,
                    "cursor": after,
                }
            )
            if after is not None:
                stream.position = decode_cursor(after)
            backlog = asyncio.get_running_loop().create_task(self._backlog(stream, start, after))
            heard = _Heard()
            pinger = asyncio.get_running_loop().create_task(self._keep_alive(stream, heard))
            async for message in ws:  # the client sends nothing we need; this ends when it goes away
                heard.now()  # any frame, a pong or not, shows the client is there
                if message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type == WSMsgType.ERROR:
                    break
            for task in (backlog, pinger):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self.hub.detach(stream)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer
            log.info("client disconnected", username=user.username, close_code=ws.close_code)
        return ws

    async def _tonight(self, user: User, selection: frozenset[Program] | None) -> date:
        """Tonight at the sites of the programs the stream carries (skyport.nights, with the catalog's rules)."""
        programs = user.programs if selection is None else user.programs & selection
        try:
            nights = await self.client.nights()
        except (CatalogUnavailable, CatalogRefused) as exc:
            log.warning("cannot learn the sites' nights from the catalog", error=str(exc))
            raise ApiError(503, "the catalog is unavailable; try again in a moment") from None
        return nights.tonight({mission for mission, _ in programs})

    async def _keep_alive(self, stream: Stream, heard: _Heard) -> None:
        """Ping every heartbeat; close with 4008 a client that answered nothing to the last ping in a heartbeat.

        A client that stopped reading is as far behind as one whose queue overflowed: it resumes with its cursor.
        """
        pinged = heard.last
        while not stream.closing:
            await asyncio.sleep(self.heartbeat)
            if heard.last < pinged:
                self.metrics.disconnects.labels("unresponsive").inc()
                log.warning("disconnecting a client that answers no ping", username=stream.user.username)
                stream.close(CLOSE_TOO_SLOW, f"too slow: no answer to a ping within {self.heartbeat:g} s")
                return
            pinged = time.monotonic()
            with contextlib.suppress(ConnectionError, RuntimeError):  # closing already: the loop above ends
                await stream.ws.ping()

    async def _backlog(self, stream: Stream, start: int, after: str | None) -> None:
        try:
            await send_backlog(self.client, stream, up_to=start, after=after)
        except (CatalogUnavailable, CatalogRefused) as exc:
            log.warning("could not read a backlog", username=stream.user.username, error=str(exc))
            stream.close(1011, "the catalog is unavailable; reconnect with your cursor")
            return
        stream.go_live(start)

    async def _close_streams(self, app: web.Application) -> None:
        for stream in list(self.hub.streams):
            stream.close(1001, "the gateway is shutting down; reconnect with your cursor")

    # --- the catalog's and the notifier's user APIs, forwarded ------------------------------------------------

    def _upstream(self, request: web.Request) -> tuple[str, str]:
        """The service that answers this request (its name and address); the gateway's refusal when none does."""
        method, path = request.method, request.path
        name = next((name for prefix, name in _UPSTREAM_OF_PREFIX if _below(path, prefix)), "catalog")
        if name == "catalog" and not any(method == m and pattern.match(path) for m, pattern in _CATALOG):
            allowed = sorted({m for m, pattern in (*_CATALOG, *_OWN) if pattern.match(path)})
            if not allowed:
                raise ApiError(404, f"no such endpoint: {method} {path}")
            # RFC 9110: a 405 lists the methods the resource has.
            raise ApiError(405, f"no {method} {path} here", headers={"Allow": ", ".join(allowed)})
        base_url = self._address_of(name)
        if base_url is None:
            raise ApiError(503, _UNCONFIGURED.get(name, f"no {name} is configured"), code=ErrorCode.UNAVAILABLE)
        return name, base_url

    def _address_of(self, upstream: str) -> str | None:
        """Where a service of the table is reached; None for one this deployment has not."""
        return {"catalog": self.client.base_url, "notifier": self.notifier_url}.get(upstream)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Pass a request to the service that answers it, and its answer back, with only the headers both need.

        The user's token goes on as it came (the upstream decides what it allows); a download's ticket is
        redeemed here and becomes the token, so no upstream ever sees tickets.
        """
        name, base_url = self._upstream(request)
        path = request.path
        token = self._bearer(request)
        query = [(k, v) for k, v in request.query.items() if k != "ticket"]
        if token is None and "ticket" in request.query and path.startswith("/v1/files/"):
            token, _ = await self._authenticate(request, ticket_allowed=True)
        headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
        # The catalog builds its download and script links on the address the browser used: the gateway's.
        headers["Forwarded"] = self._forwarded(request)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = await request.read() if request.can_read_body else None
        try:
            url = base_url + request.rel_url.raw_path
            async with self.client.session.request(
                request.method, url, params=query, headers=headers, data=body
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={name: upstream.headers[name] for name in _RESPONSE_HEADERS if name in upstream.headers},
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 18):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            log.warning("a forwarded request was not answered", upstream=name, path=path, error=repr(exc))
            raise ApiError(502, f"the {name} is unavailable; try again in a moment") from None

    def _forwarded(self, request: web.Request) -> str:
        """RFC 7239's ``Forwarded`` for the catalog: the gateway's public address, or the one this request came to."""
        if self.public_url is not None:
            scheme, _, host = self.public_url.partition("://")
        else:
            scheme, host = request.scheme, request.host
        return f'host="{host}";proto={scheme}'


def _below(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or under it (``/v1/inbox/read`` is, ``/v1/inboxes`` is not)."""
    return path == prefix or path.startswith(prefix + "/")


class _Heard:
    """When a stream's client was last heard from (any frame)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def now(self) -> None:
        self.last = time.monotonic()


def _stream_parameters(request: web.Request) -> tuple[date | None, str | None, frozenset[Program] | None, int]:
    """The stream's night, cursor, program selection and the protocol the client asked for (1 by default)."""
    query = request.query
    unknown = set(query) - {"night", "cursor", "program", "ticket", "protocol"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(400, f"unknown parameter {name!r}: use night, cursor, program, protocol, ticket", parameter=name)
    protocol_text = query.get("protocol", "1")
    if not (len(protocol_text) <= 4 and protocol_text.isascii() and protocol_text.isdigit()) or not int(protocol_text):
        raise ApiError(400, f"protocol must be a whole number from 1, not {protocol_text[:20]!r}", parameter="protocol")
    night_text = query.get("night") or ""
    try:
        night = date.fromisoformat(night_text) if night_text else None  # None: tonight, once the user is known
    except ValueError:
        raise ApiError(
            400,
            f"night must be a date YYYY-MM-DD (when the site's night began), not {night_text[:40]!r}",
            parameter="night",
        ) from None
    after = query.get("cursor")
    if after is not None:
        try:
            decode_cursor(after)
        except BadCursor as exc:
            raise ApiError(400, str(exc), code=ErrorCode.UNKNOWN_CURSOR, parameter="cursor") from None
    selection: set[Program] = set()
    for text in query.getall("program", []):
        match = _PROGRAM.match(text)
        if match is None:
            raise ApiError(400, f"program must be MISSION/PROPID, not {text[:80]!r}", parameter="program")
        selection.add((match.group(1).upper(), match.group(2)))
    return night, after, frozenset(selection) if selection else None, int(protocol_text)
