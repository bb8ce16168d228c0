"""Subscriptions: made, listed, deleted by their owner (or an operator), ended by a signed unsubscribe link."""

from __future__ import annotations

import asyncpg

from services.notifier import storage
from services.notifier.levels import LevelOrder
from services.notifier.models import SubscriptionCreated, SubscriptionRequest
from services.notifier.schedule import zone
from services.notifier.signing import Signer, parse_ids
from services.notifier.webhooks import check_url, new_secret


class Refused(ValueError):
    """A subscription that cannot be made as asked; ``field`` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class BadLink(ValueError):
    """An unsubscribe link that was not signed by this notifier for these subscriptions."""


async def subscribe(
    conn: asyncpg.Connection,
    levels: LevelOrder,
    username: str,
    email: str,
    request: SubscriptionRequest,
    *,
    allow_http_webhooks: bool = False,
) -> SubscriptionCreated:
    """Keep a subscription for ``username`` at ``email``; the level and time zone are checked against the
    configuration first (a level that is not the mission's could never match). A webhook subscription gets its
    signing secret here, in the answer and nowhere else: its owner keeps it to verify what the notifier sends."""
    try:
        zone(request.time_zone)
    except ValueError as exc:
        raise Refused("time_zone", str(exc)) from None
    if request.min_level is not None and request.mission is not None:
        try:
            request = request.model_copy(update={"min_level": levels.level(request.mission, request.min_level)})
        except ValueError as exc:
            raise Refused("min_level", str(exc)) from None
    if "@" not in email:
        raise Refused("email", f"{email!r} is not an email address")
    secret = None
    if request.webhook_url is not None:
        try:
            url = check_url(request.webhook_url, allow_http=allow_http_webhooks)
        except ValueError as exc:
            raise Refused("webhook_url", str(exc)) from None
        request = request.model_copy(update={"webhook_url": url})
        secret = new_secret()
    made = await storage.insert_subscription(conn, username, email, request, secret)
    return SubscriptionCreated(**made.model_dump(), webhook_secret=secret)


async def unsubscribe(conn: asyncpg.Connection, signer: Signer, ids_text: str, signature: str) -> list[int]:
    """End the subscriptions a signed link names; BadLink when the signature is not this notifier's for them."""
    try:
        ids = parse_ids(ids_text)
    except ValueError:
        raise BadLink("the link does not name subscriptions") from None
    if not signer.verify("unsubscribe", ids_text, signature):
        raise BadLink("the link's signature is not valid for these subscriptions")
    await storage.end_subscriptions(conn, ids, "unsubscribed")
    return ids
