"""Webhooks on the real RabbitMQ and PostgreSQL, with an aiohttp server as the receiver: signed, retried with
back-off (and the receiver's Retry-After) until taken once, stopped by a 410, and refused over plain http."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from services.notifier import cli, storage, subscriptions
from services.notifier.app import parts
from services.notifier.models import SubscriptionCreated, SubscriptionRequest
from services.notifier.webhooks import WebhookSender
from tests.integration.notifier.conftest import World
from tests.support.catalog import archived
from tests.support.waiting import eventually


@dataclass
class Receiver:
    """A webhook receiver that answers each POST with the next of ``answers`` (then 200), and keeps what came."""

    answers: list[tuple[int, dict[str, str]]]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    taken: list[bytes] = field(default_factory=list)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        if status == 200:
            self.taken.append(body)
        return web.Response(status=status, headers=headers, text="ok" if status == 200 else "not now")

    def server(self, port: int) -> TestServer:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        return TestServer(app, host="127.0.0.1", port=port)


class Clock:
    """The delivery loop's time, moved on by the test (the back-off is minutes; the test takes seconds)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def on(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with aiohttp.ClientSession() as session:
        yield WebhookSender(session, timeout=5)


async def webhook_subscription(world: World, url: str) -> SubscriptionCreated:
    """Alice's fast webhook subscription to the program (http allowed, as in development: the receiver has no TLS)."""
    request = SubscriptionRequest(
        mission="KECK", propid=world.propid, triggers=["new"], frequency="fast", channel="webhook", webhook_url=url
    )
    async with world.notifier_db.transaction() as conn:
        return await subscriptions.subscribe(
            conn, parts(world.settings).levels, "alice", "alice@example.org", request, allow_http_webhooks=True
        )


async def notices_of(world: World, subscription_id: int) -> int:
    rows = await world.rows("SELECT count(*) AS n FROM pending_notices WHERE subscription_id = $1", subscription_id)
    return int(rows[0]["n"])


def recorded(world: World, subscription_id: int) -> Callable[[], Awaitable[bool]]:
    """A condition for ``eventually``: the subscription has a notice."""

    async def condition() -> bool:
        return await notices_of(world, subscription_id) > 0

    return condition


async def attempts_of(world: World, subscription_id: int) -> list[tuple[str, int | None]]:
    rows = await world.rows(
        "SELECT outcome, http_status FROM delivery_attempts WHERE channel = 'webhook' AND $1 = ANY(subscription_ids) "
        "ORDER BY attempt_id",
        subscription_id,
    )
    return [(r["outcome"], r["http_status"]) for r in rows]


def signed_by(secret: str, header: str, body: bytes) -> bool:
    """What the README tells a receiver to do, written out here rather than imported from the notifier."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(int(fields["t"]) - datetime.now(UTC).timestamp()) < 300


async def test_a_receiver_that_fails_three_times_then_succeeds_receives_the_notice_once_signed(
    world: World, sender: WebhookSender
) -> None:
    port = unused_port()
    receiver = Receiver(answers=[(503, {"Retry-After": "120"}), (429, {"Retry-After": "7"})])
    made = await webhook_subscription(world, f"http://127.0.0.1:{port}/hook")
    assert made.webhook_secret is not None
    clock = Clock()
    loop = world.new_deliverer(clock=clock, webhooks=sender, max_attempts=5)
    data = archived(f"HI.{world.unique}.w1", propid=world.propid)
    await world.catalog.publish(data)
    await eventually(recorded(world, made.subscription_id), what="the notice recorded")

    # 1: nobody listens yet (connection refused): our own back-off, 60 s after the first failure.
    assert await loop.deliver_due() == 1
    clock.on(30)
    assert await loop.deliver_due() == 0
    server = receiver.server(port)
    await server.start_server()
    try:
        clock.on(31)
        assert await loop.deliver_due() == 1  # 2: 503 with Retry-After: 120
        clock.on(100)
        assert await loop.deliver_due() == 0  # the receiver's Retry-After is honoured, not our 120 s back-off
        clock.on(21)
        assert await loop.deliver_due() == 1  # 3: 429 with Retry-After: 7
        clock.on(8)
        assert await loop.deliver_due() == 1  # 4: taken
        clock.on(3600)
        assert await loop.deliver_due() == 0
    finally:
        await server.close()

    assert len(receiver.taken) == 1
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    assert signed_by(made.webhook_secret, headers["Skyport-Signature"], body)
    assert not signed_by(made.webhook_secret, headers["Skyport-Signature"], body.replace(b"KECK", b"KECX"))
    # The same notices carry the same key on every attempt: a receiver that took a copy can drop the next.
    keys = {h["Idempotency-Key"] for h, _ in receiver.requests}
    assert len(keys) == 1
    notice = json.loads(body)
    assert notice["delivery"] == keys.pop()
    (item,) = notice["notices"]
    assert {k: item[k] for k in ("mission", "propid", "level", "type")} == {
        "mission": "KECK",
        "propid": world.propid,
        "level": "0",
        "type": "new",
    }
    assert [(f["archive_id"], f["sha256"]) for f in item["files"]] == [(data.archive_id, data.sha256)]
    assert await attempts_of(world, made.subscription_id) == [
        ("temporary", None),
        ("temporary", 503),
        ("temporary", 429),
        ("accepted", 200),
    ]
    rows = await world.rows("SELECT state, channel, message_key FROM deliveries")
    assert [(r["state"], r["channel"], r["message_key"]) for r in rows] == [("sent", "webhook", notice["delivery"])]
    assert world.mailbox.messages == []  # a webhook subscription is told by its webhook only


async def test_a_410_stops_the_channel_and_says_so(world: World, sender: WebhookSender) -> None:
    port = unused_port()
    receiver = Receiver(answers=[(410, {})])
    server = receiver.server(port)
    await server.start_server()
    try:
        made = await webhook_subscription(world, f"http://127.0.0.1:{port}/hook")
        # An email subscription to the same program shows when the second event has been matched.
        witness = await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"])
        loop = world.new_deliverer(clock=Clock(), webhooks=sender, max_attempts=5)
        await world.catalog.publish(archived(f"HI.{world.unique}.g1", propid=world.propid))
        await eventually(recorded(world, made.subscription_id), what="the first notice recorded")
        assert await loop.deliver_due() == 1

        await world.catalog.publish(archived(f"HI.{world.unique}.g2", propid=world.propid))

        async def second_matched() -> bool:
            return await notices_of(world, witness["subscription_id"]) == 2

        await eventually(second_matched, what="the second event matched")
        assert await loop.deliver_due() == 0
    finally:
        await server.close()

    assert len(receiver.requests) == 1
    assert await notices_of(world, made.subscription_id) == 1  # a stopped channel matches nothing more
    assert await attempts_of(world, made.subscription_id) == [("permanent", 410)]
    async with world.notifier_db.transaction() as conn:
        kept = await storage.subscription(conn, made.subscription_id)
        status = await storage.status(conn)
    assert kept is not None
    assert kept.stopped_at is not None
    assert kept.stopped_reason is not None
    assert "410" in kept.stopped_reason
    assert [s["subscription_id"] for s in status["stopped"]] == [made.subscription_id]
    assert [f["channel"] for f in status["failed"]] == ["webhook"]


async def test_a_plain_http_receiver_is_refused_unless_allowed_and_the_secret_is_shown_once(world: World) -> None:
    body = {"mission": "KECK", "propid": world.propid, "channel": "webhook"}
    refused = await world.notifier.post(
        "/v1/subscriptions",
        json={**body, "webhook_url": "http://receiver.example/hook"},
        headers={"Authorization": f"Bearer {world.tokens['alice']}"},
    )
    answer = await refused.json()
    assert refused.status == 400, answer
    assert answer["errors"][0]["field"] == "webhook_url"
    assert await world.rows("SELECT 1 FROM subscriptions") == []

    made = await world.subscribe("alice", **body, webhook_url="https://receiver.example/hook")
    assert made["webhook_secret"].startswith("whsec_")
    listed = await world.notifier.get("/v1/subscriptions", headers={"Authorization": f"Bearer {world.tokens['alice']}"})
    (kept,) = (await listed.json())["subscriptions"]
    assert kept["webhook_url"] == "https://receiver.example/hook"
    assert "webhook_secret" not in kept


async def test_a_rotated_secret_signs_what_follows_and_the_old_one_nothing(world: World, sender: WebhookSender) -> None:
    port = unused_port()
    receiver = Receiver(answers=[])
    made = await webhook_subscription(world, f"http://127.0.0.1:{port}/hook")
    assert made.webhook_secret is not None
    path = f"/v1/subscriptions/{made.subscription_id}/rotate-secret"
    status, answer = await world.call("POST", path, "bob")
    assert (status, answer["code"]) == (404, "not_found")
    email = await world.subscribe("alice", mission="KECK", propid=world.propid)
    status, answer = await world.call("POST", f"/v1/subscriptions/{email['subscription_id']}/rotate-secret", "alice")
    assert (status, answer["code"]) == (409, "conflict")

    status, answer = await world.call("POST", path, "alice")

    assert status == 200, answer
    new_secret = answer["webhook_secret"]
    assert new_secret.startswith("whsec_")
    assert new_secret != made.webhook_secret
    server = receiver.server(port)
    await server.start_server()
    try:
        loop = world.new_deliverer(webhooks=sender)
        await world.catalog.publish(archived(f"HI.{world.unique}.r1", propid=world.propid))
        await eventually(recorded(world, made.subscription_id), what="the notice recorded")
        assert await loop.deliver_due() == 1
        ((headers, body),) = receiver.requests
        assert signed_by(new_secret, headers["Skyport-Signature"], body)
        assert not signed_by(made.webhook_secret, headers["Skyport-Signature"], body)
    finally:
        await server.close()


async def test_the_webhook_test_command_posts_a_signed_test_body_and_says_what_the_receiver_answered(
    world: World,
) -> None:
    port = unused_port()
    receiver = Receiver(answers=[(200, {}), (503, {})])
    made = await webhook_subscription(world, f"http://127.0.0.1:{port}/hook")
    assert made.webhook_secret is not None
    server = receiver.server(port)
    await server.start_server()
    try:
        ok = await cli.webhook_test(world.notifier_db, made.subscription_id, allow_private=True)
        failing = await cli.webhook_test(world.notifier_db, made.subscription_id, allow_private=True)
        # Outside development a receiver on this machine is not posted to at all.
        refused = await cli.webhook_test(world.notifier_db, made.subscription_id, allow_private=False)
    finally:
        await server.close()

    assert (ok.outcome, ok.status) == ("accepted", 200)
    assert (failing.outcome, failing.status, failing.response) == ("temporary", 503, "HTTP 503: not now")
    assert (refused.outcome, refused.status) == ("rejected", None)
    assert "https" in refused.response  # an http:// receiver: refused before its address is looked at
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[0]
    assert signed_by(made.webhook_secret, headers["Skyport-Signature"], body)
    assert json.loads(body) | {"delivery": None} == {
        "delivery": None,
        "subscription_id": made.subscription_id,
        "test": True,
        "notices": [],
    }
    # Nothing was recorded: a test is not a delivery.
    assert await world.rows("SELECT 1 FROM deliveries") == []
    email = await world.subscribe("alice", mission="KECK", propid=world.propid)
    with pytest.raises(cli.CommandError):
        await cli.webhook_test(world.notifier_db, email["subscription_id"], allow_private=True)
