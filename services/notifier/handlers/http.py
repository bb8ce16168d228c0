"""The notifier's HTTP API: a signed-in person's subscriptions, and the signed links of its emails.

Subscriptions are a person's own: the bearer token is the catalog's, and the catalog's ``/v1/me`` says whose it
is and at which address they are written to. The signed links (unsubscribe, download everything) work without
signing in: the signature is the credential, and it names what it may act on.
"""

from __future__ import annotations

import html
import shlex

from aiohttp import web

from services.notifier import storage, subscriptions
from services.notifier.catalog_client import CatalogClient, CatalogUnavailable
from services.notifier.levels import LevelOrder
from services.notifier.models import SubscriptionList, SubscriptionRequest
from services.notifier.signing import Signer
from skyport.api.errors import ErrorCode
from skyport.db import Database
from skyport.http import CHALLENGE, ApiError, bearer_token, json_body, json_errors, refuse_nul


def _translate(exc: Exception) -> ApiError | None:
    if isinstance(exc, CatalogUnavailable):
        return ApiError(503, "the catalog cannot say who you are now; try again", code=ErrorCode.UNAVAILABLE)
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
    ) -> None:
        self.db = db
        self.allow_http_webhooks = allow_http_webhooks
        self.catalog = catalog
        self.signer = signer
        self.levels = levels

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors(_translate), refuse_nul], client_max_size=64 * 1024)
        app.router.add_get("/v1/subscriptions", self.list)
        app.router.add_post("/v1/subscriptions", self.create)
        app.router.add_delete("/v1/subscriptions/{subscription_id}", self.delete)
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
                conn, self.levels, username, email, body, allow_http_webhooks=self.allow_http_webhooks
            )
        return web.json_response(text=made.model_dump_json(), status=201)

    async def delete(self, request: web.Request) -> web.Response:
        username, _ = await self._signed_in(request)
        try:
            subscription_id = int(request.match_info["subscription_id"])
        except ValueError:
            raise ApiError(400, "subscription_id must be a number", parameter="subscription_id") from None
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


def _page(status: int, title: str, body: str = "") -> web.Response:
    head = "<!doctype html><html><head><meta charset='utf-8'><title>Skyport</title></head>"
    text = f"{head}<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    return web.Response(status=status, text=text, content_type="text/html")
