"""``skyport notifier ...``: subscriptions and deliveries for operators (subscribe, list, status, resend,
webhook-test).

Each command is an ``async`` function on a :class:`~skyport.db.Database` (what the tests call) behind a thin
argparse adapter, calling the same functions as the HTTP API.
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import Field, ValidationError

from services.notifier import storage, subscriptions
from services.notifier.levels import LevelOrder
from services.notifier.models import TRIGGERS, Subscription, SubscriptionRequest
from services.notifier.webhooks import HookResult, PublicResolver, WebhookSender
from skyport.commands import CommandError, reported, with_database
from skyport.db import Database
from skyport.instruments import load_instruments
from skyport.settings import CommonSettings

SCHEMA = "notifier"
T = TypeVar("T")


class CommandSettings(CommonSettings):
    """What the commands need: the database (common), the level order for ``subscribe``, the webhook rules for
    ``webhook-test``."""

    instruments_dir: Path = Field(
        default=Path("deploy/instruments"), description="The instrument configuration (each mission's levels)."
    )
    notifier_webhook_allow_http: bool = Field(
        default=False, description="As the notifier's: http:// and local receivers allowed (development only)."
    )
    notifier_webhook_timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds a receiver has.")


async def subscribe(db: Database, levels: LevelOrder, username: str, email: str, **fields: Any) -> Subscription:
    try:
        request = SubscriptionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "subscription"
        raise CommandError(f"{where}: {first['msg']}") from None
    async with db.transaction() as conn:
        try:
            return await subscriptions.subscribe(conn, levels, username, email, request)
        except subscriptions.Refused as exc:
            raise CommandError(f"{exc.field}: {exc}") from None


async def list_subscriptions(db: Database, username: str | None = None) -> list[Subscription]:
    async with db.transaction() as conn:
        return await storage.subscriptions(conn, username)


async def status(db: Database) -> dict[str, Any]:
    async with db.transaction() as conn:
        return await storage.status(conn)


async def resend(db: Database, delivery_id: int) -> int:
    async with db.transaction() as conn:
        count = await storage.resend(conn, delivery_id)
    if count == 0:
        raise CommandError(f"delivery {delivery_id} has no notices to send again (no such delivery?)")
    return count


async def webhook_test(
    db: Database, subscription_id: int, *, allow_private: bool = False, timeout: float = 10.0
) -> HookResult:
    """POST a signed test body to a webhook subscription's receiver, as a notice would be (the same signature and
    headers, ``"test": true`` and no notices), and say what it answered. Nothing is recorded."""
    async with db.transaction() as conn:
        hook = await storage.webhook_of(conn, subscription_id)
    if hook is None:
        raise CommandError(f"subscription {subscription_id} is not a webhook subscription (no such subscription?)")
    url, secret = hook
    key = f"test-{subscription_id}-{secrets.token_hex(4)}"
    body = json.dumps({"delivery": key, "subscription_id": subscription_id, "test": True, "notices": []}).encode()
    connector = aiohttp.TCPConnector(resolver=None if allow_private else PublicResolver())
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        sender = WebhookSender(session, timeout=timeout, allow_private=allow_private)
        return await sender.post(url, secret, key, body)


# --- argparse ----------------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "notifier", help="subscriptions and deliveries: subscribe, list, status, resend, webhook-test"
    )
    sub = parser.add_subparsers(dest="notifier_command", required=True)

    make = sub.add_parser("subscribe", help="subscribe a person to a program, an obset or a file")
    make.add_argument("username", help="the subscriber (a catalog username)")
    make.add_argument("--email", required=True, help="where the notices go")
    make.add_argument("--mission", help="e.g. JWST")
    make.add_argument("--propid", help="e.g. 1011")
    make.add_argument("--obset", help="an obset of the program")
    make.add_argument("--archive-id", help="one file, by its archive ID")
    make.add_argument("--trigger", action="append", choices=TRIGGERS, help="repeatable (default: all four)")
    make.add_argument("--min-level", help="this level or above, in the mission's order")
    make.add_argument(
        "--frequency",
        choices=["fast", "hourly", "daily", "weekly", "monthly"],
        default="daily",
        help="fast: at once, bursts folded; the others: digests (default daily)",
    )
    make.add_argument("--at", default="08:00", help="HH:MM, the digests' time of day (default 08:00)")
    make.add_argument("--time-zone", default="UTC", help="an IANA name, e.g. Pacific/Honolulu (default UTC)")
    make.set_defaults(func=_subscribe)

    listing = sub.add_parser("list", help="subscriptions, everyone's or one person's")
    listing.add_argument("--user", help="only this person's")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(func=_list)

    state = sub.add_parser("status", help="pending, sent and failed deliveries, with reasons")
    state.set_defaults(func=_status)

    again = sub.add_parser("resend", help="send a delivery's notices again (and restart a stopped channel)")
    again.add_argument("delivery_id", type=int, help="a delivery of `skyport notifier status`")
    again.set_defaults(func=_resend)

    test = sub.add_parser("webhook-test", help="send a signed test POST to a webhook subscription's receiver")
    test.add_argument("subscription_id", type=int, help="a webhook subscription of `skyport notifier list`")
    test.set_defaults(func=_webhook_test)


def _run(command: Callable[[Database], Awaitable[T]]) -> T:
    return with_database(SCHEMA, command, CommandSettings())


_reported = reported("notifier", SCHEMA)


@_reported
def _subscribe(args: argparse.Namespace) -> int:
    levels = LevelOrder.of(load_instruments(CommandSettings().instruments_dir))
    fields = {
        "mission": args.mission,
        "propid": args.propid,
        "obset": args.obset,
        "archive_id": args.archive_id,
        "triggers": args.trigger,
        "min_level": args.min_level,
        "frequency": args.frequency,
        "time_of_day": args.at,
        "time_zone": args.time_zone,
    }
    made = _run(lambda db: subscribe(db, levels, args.username, args.email, **fields))
    print(f"subscription {made.subscription_id}: {made.username} <{made.email}>, {made.what}, {made.frequency}")
    return 0


@_reported
def _list(args: argparse.Namespace) -> int:
    found = _run(lambda db: list_subscriptions(db, args.user))
    if args.json:
        print(json.dumps([json.loads(s.model_dump_json()) for s in found], indent=1))
        return 0
    for s in found:
        state = "active" if s.active and s.stopped_at is None else "ended" if not s.active else "stopped"
        level = f" level{'>=' if s.or_above else '='}{s.min_level}" if s.min_level else ""
        print(
            f"{s.subscription_id}\t{s.username}\t{s.email}\t{s.what}\t{','.join(s.triggers)}{level}\t"
            f"{s.frequency} {s.time_of_day} {s.time_zone}\t{state}"
        )
    return 0


@_reported
def _status(args: argparse.Namespace) -> int:
    print(json.dumps(_run(status), indent=1, default=str))
    return 0


@_reported
def _resend(args: argparse.Namespace) -> int:
    count = _run(lambda db: resend(db, args.delivery_id))
    print(f"delivery {args.delivery_id}: {count} notice(s) will be sent again")
    return 0


@_reported
def _webhook_test(args: argparse.Namespace) -> int:
    settings = CommandSettings()
    result = _run(
        lambda db: webhook_test(
            db,
            args.subscription_id,
            allow_private=settings.notifier_webhook_allow_http,
            timeout=settings.notifier_webhook_timeout,
        )
    )
    print(f"subscription {args.subscription_id}: {result.outcome}, {result.response}")
    return 0 if result.outcome == "accepted" else 1
