"""The notifier's HTTP API: a signed-in person's subscriptions, their preview and inbox, and the signed links of
its emails.

Subscriptions are a person's own: the bearer token is the catalog's, and the catalog's ``/v1/me`` says whose it
is and at which address they are written to. The signed links (unsubscribe, download everything) work without
signing in: the signature is the credential, and it names what it may act on.
"""

from __future__ import annotations

import html
import json
import shlex
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from services.notifier import preview, storage, subscriptions
from services.notifier.catalog_client import CatalogClient, CatalogUnavailable
from services.notifier.levels import LevelOrder
from services.notifier.models import (
    Inbox,
    InboxNotice,
    InboxRead,
    Levels,
    MissionLevels,
    SubscriptionChange,
    SubscriptionList,
    SubscriptionRequest,
)
from services.notifier.signing import Signer
from services.notifier.webhooks import Resolve, system_resolve
from skyport.api.errors import ErrorCode
from skyport.db import Database
from skyport.http import CHALLENGE, ApiError, bearer_token, json_body, json_errors, refuse_nul


def _translate(exc: Exception) -> ApiError | None:
    if isinstance(exc, CatalogUnavailable):
        return ApiError(503, "the catalog cannot say who you are now; try again", code=ErrorCode.UNAVAILABLE)
    if isinstance(exc, subscriptions.NotAWebhook):
        return ApiError(409, str(exc), code=ErrorCode.CONFLICT)
    if isinstance(exc, subscriptions.Refused):
        errors = [{"field": exc.field, "message": str(exc)}]
        return ApiError(400, str(exc), code=ErrorCode.BAD_BODY, parameter=exc.field, errors=errors)
    return None


class NotifierApi:
    def __init__(
        self,
        db: Database,
        catalog: CatalogClient,
        signer: Signer,
        levels: LevelOrder,
        *,
        allow_http_webhooks: bool = False,
        coalesce_window: float = 60.0,
        fast_per_hour: int = 6,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        resolve: Resolve = system_resolve,
    ) -> None:
        self.db = db
        self.allow_http_webhooks = allow_http_webhooks
        self.coalesce_window = coalesce_window
        self.fast_per_hour = fast_per_hour
        self.clock = clock
        self.resolve = resolve
        """How webhook hosts are resolved to be checked (a test's fake resolver)."""
        self.catalog = catalog
        self.signer = signer
        self.levels = levels

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors(_translate), refuse_nul], client_max_size=64 * 1024)
        app.router.add_get("/v1/subscriptions", self.list)
        app.router.add_post("/v1/subscriptions", self.create)
        app.router.add_post("/v1/subscriptions/preview", self.preview)
        app.router.add_get("/v1/subscriptions/levels", self.levels_of_missions)
        app.router.add_patch("/v1/subscriptions/{subscription_id}", self.change)
        app.router.add_delete("/v1/subscriptions/{subscription_id}", self.delete)
        app.router.add_post("/v1/subscriptions/{subscription_id}/rotate-secret", self.rotate_secret)
        app.router.add_get("/v1/inbox", self.inbox)
        app.router.add_post("/v1/inbox/read", self.mark_read)
        app.router.add_get("/v1/unsubscribe", self.unsubscribe_page)
        app.router.add_post("/v1/unsubscribe", self.unsubscribe)
        app.router.add_get("/v1/notices/{message_key}/download-script", self.download_script)
        return app

    async def _signed_in(self, request: web.Request) -> tuple[str, str | None]:
        token = bearer_token(request)
        me = None if token is None else await self.catalog.me(token)
        if me is None:
            raise ApiError(401, "sign in: a valid bearer token is needed", headers={"WWW-Authenticate": CHALLENGE})
        return me.username, me.email

    async def list(self, request: web.Request) -> web.Response:
        username, _ = await self._signed_in(request)
        async with self.db.transaction() as conn:
            found = await storage.subscriptions(conn, username)
        return web.json_response(text=SubscriptionList(subscriptions=found).model_dump_json())

    async def create(self, request: web.Request) -> web.Response:
        username, email = await self._signed_in(request)
        body = await json_body(request, SubscriptionRequest)
        if not email:
            raise ApiError(409, "your account has no email address to write to", code=ErrorCode.CONFLICT)
        async with self.db.transaction() as conn:
            made = await subscriptions.subscribe(
                conn,
                self.levels,
                username,
                email,
                body,
                allow_http_webhooks=self.allow_http_webhooks,
                resolve=self.resolve,
            )
        return web.json_response(text=made.model_dump_json(), status=201)

    async def change(self, request: web.Request) -> web.Response:
        """Change one's own subscription's settings; another person's is answered as if it did not exist."""
        username, _ = await self._signed_in(request)
        subscription_id = _subscription_id(request)
        body = await json_body(request, SubscriptionChange)
        async with self.db.transaction() as conn:
            changed = await subscriptions.change(
                conn,
                self.levels,
                username,
                subscription_id,
                body,
                allow_http_webhooks=self.allow_http_webhooks,
                resolve=self.resolve,
            )
        if changed is None:
            raise ApiError(404, "you have no such subscription")
        return web.json_response(text=changed.model_dump_json())

    async def rotate_secret(self, request: web.Request) -> web.Response:
        """A webhook subscription's new signing secret, shown in this answer only."""
        username, _ = await self._signed_in(request)
        subscription_id = _subscription_id(request)
        async with self.db.transaction() as conn:
            rotated = await subscriptions.rotate_secret(conn, username, subscription_id)
        if rotated is None:
            raise ApiError(404, "you have no such subscription")
        return web.json_response(text=rotated.model_dump_json())

    async def levels_of_missions(self, request: web.Request) -> web.Response:
        """Each mission's level order and default level, for a form's level choice (configuration: no sign-in)."""
        missions = [
            MissionLevels(mission=name, levels=list(order), default_level=self.levels.default(name))
            for name, order in sorted(self.levels.missions().items())
        ]
        return web.json_response(text=Levels(missions=missions).model_dump_json())

    async def preview(self, request: web.Request) -> web.Response:
        """What a subscription (the body of a create) would have sent over the last 30 days; nothing is kept."""
        username, _ = await self._signed_in(request)
        body = await json_body(request, SubscriptionRequest)
        wanted = await subscriptions.checked(
            self.levels, body, allow_http_webhooks=self.allow_http_webhooks, resolve=self.resolve
        )
        answer = await preview.preview(
            self.db,
            self.catalog,
            self.levels,
            username,
            wanted,
            now=self.clock(),
            coalesce_window=self.coalesce_window,
            fast_per_hour=self.fast_per_hour,
        )
        return web.json_response(text=answer.model_dump_json())

    async def inbox(self, request: web.Request) -> web.Response:
        """One's in-page notices, newest first, ``limit`` at a time (``before``: the last id of the previous page)."""
        username, _ = await self._signed_in(request)
        limit = _query_int(request, "limit", 50, 1, 200) or 50
        before = _query_int(request, "before", None, 1, 2**63 - 1)
        async with self.db.transaction() as conn:
            rows = await storage.inbox(conn, username, limit, before)
            unread = await storage.unread(conn, username)
        notices = [
            InboxNotice(
                id=row["inbox_id"],
                created_at=row["created_at"],
                read=row["read_at"] is not None,
                subject=row["subject"],
                subscription_id=row["subscription_id"],
                **json.loads(row["content"]),
            )
            for row in rows
        ]
        return web.json_response(text=Inbox(notices=notices, unread=unread).model_dump_json())

    async def mark_read(self, request: web.Request) -> web.Response:
        username, _ = await self._signed_in(request)
        body = await json_body(request, InboxRead)
        async with self.db.transaction() as conn:
            marked = await storage.mark_read(conn, username, None if body.all else body.ids, self.clock())
            unread = await storage.unread(conn, username)
        return web.json_response({"marked": marked, "unread": unread})

    async def delete(self, request: web.Request) -> web.Response:
        username, _ = await self._signed_in(request)
        subscription_id = _subscription_id(request)
        async with self.db.transaction() as conn:
            if not await storage.delete_subscription(conn, subscription_id, username):
                raise ApiError(404, "you have no such subscription")
        return web.Response(status=204)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        """A link followed in a browser asks before it acts: mail scanners follow links, and must not unsubscribe."""
        ids, signature = request.query.get("s", ""), request.query.get("sig", "")
        if not self.signer.verify("unsubscribe", ids, signature):
            return _page(400, "This unsubscribe link is not valid.")
        action = html.escape(f"/v1/unsubscribe?{request.query_string}", quote=True)
        return _page(
            200,
            "Stop these Skyport notices?",
            f'<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe" '
            'value="One-Click"><button type="submit">Unsubscribe</button></form>',
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """RFC 8058 one-click: a POST to the signed link (from the mail client or the page) ends the subscriptions."""
        query = request.query
        try:
            async with self.db.transaction() as conn:
                ids = await subscriptions.unsubscribe(conn, self.signer, query.get("s", ""), query.get("sig", ""))
        except subscriptions.BadLink as exc:
            return _page(400, f"This unsubscribe link is not valid: {exc}.")
        return _page(200, f"Unsubscribed: you will get no more notices of subscription {', '.join(map(str, ids))}.")

    async def download_script(self, request: web.Request) -> web.Response:
        """A shell script that downloads every file of one email (the catalog still checks access per file)."""
        key = request.match_info["message_key"]
        if not self.signer.verify("download", key, request.query.get("sig", "")):
            raise ApiError(404, "no such notice")
        async with self.db.transaction() as conn:
            content = await storage.delivery_by_key(conn, key)
        if content is None:
            raise ApiError(404, "no such notice")
        lines = ["#!/bin/sh", "# Skyport: every file of one notice. Set SKYPORT_TOKEN for proprietary data.", "set -e"]
        auth = '${SKYPORT_TOKEN:+-H "Authorization: Bearer $SKYPORT_TOKEN"}'
        seen = set()
        for notice in content.get("notices", []):
            for f in notice.get("files", []):
                if f["url"] in seen:
                    continue
                seen.add(f["url"])
                name = shlex.quote(f"{f['archive_id']}.v{f['version']}.fits")
                lines.append(f"curl -fL {auth} -o {name} {shlex.quote(f['url'])}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/x-shellscript")


def _subscription_id(request: web.Request) -> int:
    try:
        return int(request.match_info["subscription_id"])
    except ValueError:
        raise ApiError(400, "subscription_id must be a number", parameter="subscription_id") from None


def _query_int(request: web.Request, name: str, default: int | None, lowest: int, highest: int) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number", parameter=name) from None
    if not lowest <= value <= highest:
        raise ApiError(400, f"{name} must be from {lowest} to {highest}", parameter=name)
    return value


def _page(status: int, title: str, body: str = "") -> web.Response:
    head = "<!doctype html><html><head><meta charset='utf-8'><title>Skyport</title></head>"
    text = f"{head}<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    return web.Response(status=status, text=text, content_type="text/html")
