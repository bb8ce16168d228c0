"""Subscriptions: made, changed, listed, deleted by their owner (or an operator), ended by a signed unsubscribe link."""

from __future__ import annotations

import asyncpg
from pydantic import ValidationError

from services.notifier import storage
from services.notifier.levels import LevelOrder
from services.notifier.models import Subscription, SubscriptionChange, SubscriptionCreated, SubscriptionRequest
from services.notifier.schedule import next_delivery, zone
from services.notifier.signing import Signer, parse_ids
from services.notifier.webhooks import Resolve, check_receiver, new_secret, system_resolve


class Refused(ValueError):
    """A subscription that cannot be made as asked; ``field`` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotAWebhook(ValueError):
    """A webhook's action (a new secret, a test POST) asked of a subscription that is not a webhook's."""


class BadLink(ValueError):
    """An unsubscribe link that was not signed by this notifier for these subscriptions."""


async def checked(
    levels: LevelOrder,
    request: SubscriptionRequest,
    *,
    allow_http_webhooks: bool = False,
    resolve: Resolve = system_resolve,
) -> SubscriptionRequest:
    """The request as it would be kept, or Refused naming the field to change: the time zone known, the level
    spelled as the mission's configuration spells it (a level that is not the mission's could never match), the
    mission's ``notify_default_level`` when it names none, the webhook URL acceptable (https, and a host on the
    public internet: ``webhooks.check_receiver``). Creating, changing and previewing a subscription all go through
    here, so a preview is of what would be kept."""
    try:
        zone(request.time_zone)
    except ValueError as exc:
        raise Refused("time_zone", str(exc)) from None
    if request.mission is not None:
        level = request.min_level or levels.default(request.mission)
        if level is not None:
            try:
                request = request.model_copy(update={"min_level": levels.level(request.mission, level)})
            except ValueError as exc:
                raise Refused("min_level", str(exc)) from None
    if request.webhook_url is not None:
        try:
            url = await check_receiver(request.webhook_url, allow_http=allow_http_webhooks, resolve=resolve)
        except ValueError as exc:
            raise Refused("webhook_url", str(exc)) from None
        request = request.model_copy(update={"webhook_url": url})
    return request


async def subscribe(
    conn: asyncpg.Connection,
    levels: LevelOrder,
    username: str,
    email: str,
    request: SubscriptionRequest,
    *,
    allow_http_webhooks: bool = False,
    resolve: Resolve = system_resolve,
) -> SubscriptionCreated:
    """Keep a subscription for ``username`` at ``email`` (checked first, :func:`checked`). A webhook subscription
    gets its signing secret here, in the answer and nowhere else: its owner keeps it to verify what the notifier
    sends."""
    request = await checked(levels, request, allow_http_webhooks=allow_http_webhooks, resolve=resolve)
    if "@" not in email:
        raise Refused("email", f"{email!r} is not an email address")
    secret = None if request.webhook_url is None else new_secret()
    made = await storage.insert_subscription(conn, username, email, request, secret)
    return SubscriptionCreated(**made.model_dump(), webhook_secret=secret)


async def change(
    conn: asyncpg.Connection,
    levels: LevelOrder,
    username: str,
    subscription_id: int,
    body: SubscriptionChange,
    *,
    allow_http_webhooks: bool = False,
    resolve: Resolve = system_resolve,
) -> SubscriptionCreated | None:
    """Change the settings of one of ``username``'s subscriptions; None when they have no such subscription.

    The changed settings are checked as a new subscription's are. Notices already waiting keep their due times,
    unless the frequency changed: then each is due when the new frequency would have made it due when it came
    (a daily subscription made fast sends what waits at once). A subscription that becomes a webhook gets a new
    secret, in this answer only; a change of channel or receiver restarts a channel that had stopped.
    """
    current = await storage.subscription(conn, subscription_id, username=username, lock=True)
    if current is None:
        return None
    changes = body.changes()
    merged = current.model_dump(include=set(SubscriptionRequest.model_fields)) | changes
    if changes.get("channel", current.channel) != "webhook":
        merged["webhook_url"] = None
    try:
        request = SubscriptionRequest.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "body"
        raise Refused(field, first["msg"].removeprefix("Value error, ")) from None
    request = await checked(levels, request, allow_http_webhooks=allow_http_webhooks, resolve=resolve)
    becomes_webhook = request.channel == "webhook" and current.channel != "webhook"
    secret = new_secret() if becomes_webhook else None
    restart = request.channel != current.channel or request.webhook_url != current.webhook_url
    changed = await storage.update_subscription(
        conn, subscription_id, request, new_secret=secret, clear_secret=request.channel != "webhook", restart=restart
    )
    if request.frequency != current.frequency:
        await reschedule(conn, changed)
    return SubscriptionCreated(**changed.model_dump(), webhook_secret=secret)


async def rotate_secret(
    conn: asyncpg.Connection, username: str | None, subscription_id: int
) -> SubscriptionCreated | None:
    """A new signing secret for one of ``username``'s webhook subscriptions (any one's when None: an operator),
    shown in this answer only; the old one signs nothing more from the commit. None: no such subscription."""
    current = await storage.subscription(conn, subscription_id, username=username, lock=True)
    if current is None:
        return None
    if current.channel != "webhook":
        raise NotAWebhook(f"subscription {subscription_id} is an {current.channel} subscription, not a webhook")
    secret = new_secret()
    await storage.set_webhook_secret(conn, subscription_id, secret)
    return SubscriptionCreated(**current.model_dump(), webhook_secret=secret)


async def reschedule(conn: asyncpg.Connection, subscription: Subscription) -> None:
    """Each waiting notice due when the subscription's (new) frequency would have made it due when it came."""
    waiting = await storage.waiting_notices(conn, subscription.subscription_id)
    at = SubscriptionRequest.model_validate(
        subscription.model_dump(include=set(SubscriptionRequest.model_fields))
    ).local_time
    due = {
        notice_id: next_delivery(subscription.frequency, at, subscription.time_zone, came)
        for notice_id, came in waiting
    }
    await storage.set_due(conn, due)


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
