"""Delivery on the real RabbitMQ, PostgreSQL and an aiosmtpd server: access decided when each notice is sent, bursts
folded, digests once, SMTP answers in the ledger, a notifier cut short mid-send, and the operators' commands."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from services.notifier import cli
from services.notifier.mailer import SmtpMailer, SmtpResult
from tests.integration.notifier.conftest import World
from tests.integration.notifier.test_notices import attachment_of
from tests.support.catalog import archived
from tests.support.waiting import eventually


def files_of(message: EmailMessage) -> list[str]:
    """The archive IDs an email's JSON attachment lists, every notice's."""
    notices: Any = attachment_of(message)["notices"]
    return [f["archive_id"] for n in notices for f in n["files"]]


def kind_of(message: EmailMessage) -> str:
    return str(message["Message-ID"]).strip("<>").split("-", 1)[0]


async def deliveries(world: World) -> list[tuple[str, str, str | None]]:
    rows = await world.rows("SELECT kind, state, reason FROM deliveries ORDER BY delivery_id")
    return [(r["kind"], r["state"], r["reason"]) for r in rows]


async def none_pending(world: World) -> bool:
    rows = await world.rows("SELECT count(*) AS n FROM pending_notices WHERE state = 'pending'")
    return bool(rows[0]["n"] == 0)


def two_days_on() -> datetime:
    """A clock past every daily digest due now (08:00 UTC tomorrow at the latest)."""
    return datetime.now(UTC) + timedelta(days=2)


async def test_a_collaborator_revoked_between_two_events_receives_only_the_first(world: World) -> None:
    granted = await world.catalog_api.request(
        "PUT",
        f"/v1/programs/KECK/{world.propid}/members/bob",
        who=world.tokens["alice"],
        json={"role": "collaborator"},
    )
    assert granted.status == 200, await granted.text()
    await world.subscribe("bob", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    first = archived(f"HI.{world.unique}.r1", propid=world.propid)
    await world.catalog.publish(first)
    await eventually(lambda: len(world.mailbox.messages) == 1, what="bob's first notice")
    assert files_of(world.mailbox.messages[0]) == [first.archive_id]

    revoked = await world.catalog_api.request(
        "DELETE", f"/v1/programs/KECK/{world.propid}/members/bob", who=world.tokens["alice"]
    )
    assert revoked.status == 204
    second = archived(f"HI.{world.unique}.r2", propid=world.propid)
    await world.catalog.publish(second)

    async def decided() -> bool:
        return [state for _, state, _ in await deliveries(world)] == ["sent", "withheld"]

    await eventually(decided, what="the second notice withheld")  # after the coalescing window
    assert len(world.mailbox.messages) == 1
    assert await none_pending(world)


async def test_an_administrator_who_is_no_member_is_told_of_proprietary_data_as_the_catalog_rule_says(
    world: World,
) -> None:
    await world.subscribe("carol", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    data = archived(f"HI.{world.unique}.a1", propid=world.propid)

    await world.catalog.publish(data)

    await eventually(lambda: len(world.mailbox.messages) == 1, what="the administrator's notice")
    assert world.mailbox.messages[0]["To"] == "carol@example.org"
    assert files_of(world.mailbox.messages[0]) == [data.archive_id]


@pytest.mark.timeout(240)
async def test_a_burst_makes_a_few_fast_emails_listing_every_file_and_one_daily_digest(world: World) -> None:
    await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["repro"], frequency="fast")
    await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["repro"], frequency="daily")
    ids = [f"HI.{world.unique}.b{i:03d}" for i in range(500)]  # a program of 500 files
    for archive_id in ids:
        await world.catalog.publish(archived(archive_id, propid=world.propid))
    for archive_id in ids:  # the whole program reprocessed with build 11.2
        await world.catalog.publish(archived(archive_id, propid=world.propid, version=2, software_version="11.2"))

    async def all_told_fast() -> bool:
        told = {i for m in world.mailbox.messages if kind_of(m) == "fast" for i in files_of(m)}
        return told == set(ids)

    await eventually(all_told_fast, what="every file told in fast emails", timeout=120)
    fast = [m for m in world.mailbox.messages if kind_of(m) == "fast"]
    # The first of the burst at once, the rest folded into the next after the coalescing window (2 s here).
    assert 1 <= len(fast) <= 3, [len(files_of(m)) for m in fast]
    assert sorted(i for m in fast for i in files_of(m)) == sorted(ids)  # each file once
    assert all(m["To"] == "alice@example.org" for m in fast)
    assert not [m for m in world.mailbox.messages if kind_of(m) == "digest"]  # not due yet

    world.deliverer.clock = two_days_on  # the daily digest's time comes
    world.deliverer.wake.set()
    await eventually(
        lambda: any(kind_of(m) == "digest" for m in world.mailbox.messages), what="the daily digest", timeout=60
    )
    await eventually(lambda: none_pending(world), what="nothing left to send")
    for _ in range(3):  # more rounds find nothing more to send
        assert await world.deliverer.deliver_due() == 0
    digests = [m for m in world.mailbox.messages if kind_of(m) == "digest"]
    assert len(digests) == 1
    assert sorted(files_of(digests[0])) == sorted(ids)
    notices: Any = attachment_of(digests[0])["notices"]
    assert {n["type"] for n in notices} == {"repro"}


async def test_an_smtp_5xx_stops_the_channel_says_why_and_resend_restarts_it(world: World) -> None:
    subscription = await world.subscribe(
        "alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast"
    )
    world.mailbox.reply = "550 5.1.1 <alice@example.org>: mailbox unavailable"
    await world.catalog.publish(archived(f"HI.{world.unique}.f1", propid=world.propid))

    async def failed() -> bool:
        return [state for _, state, _ in await deliveries(world)] == ["failed"]

    await eventually(failed, what="the email failed")
    [(_, _, reason)] = await deliveries(world)
    assert "550 5.1.1" in str(reason)
    [attempt] = await world.rows("SELECT outcome, smtp_code, smtp_response FROM delivery_attempts")
    assert (attempt["outcome"], attempt["smtp_code"]) == ("permanent", 550)
    assert "mailbox unavailable" in attempt["smtp_response"]
    # The channel is stopped: a later event makes no notice and no attempt.
    handled = len(await world.rows("SELECT event_id FROM processed_events"))
    await world.catalog.publish(archived(f"HI.{world.unique}.f2", propid=world.propid))

    async def next_event_handled() -> bool:
        return len(await world.rows("SELECT event_id FROM processed_events")) > handled

    await eventually(next_event_handled, what="the next event handled")
    assert len(await world.rows("SELECT 1 FROM pending_notices")) == 1  # the failed one only
    assert len(await world.rows("SELECT 1 FROM delivery_attempts")) == 1
    status = await cli.status(world.notifier_db)
    assert status["deliveries"] == {"failed": 1}
    [stopped] = status["stopped"]
    assert stopped["subscription_id"] == subscription["subscription_id"]
    assert "550 5.1.1" in stopped["stopped_reason"]
    [failure] = status["failed"]
    assert "550 5.1.1" in failure["reason"]
    listed = await cli.list_subscriptions(world.notifier_db, "alice")
    assert listed[0].stopped_at is not None

    world.mailbox.reply = None  # the address is fixed; the operator sends it again
    assert await cli.resend(world.notifier_db, failure["delivery_id"]) == 1
    await eventually(lambda: len(world.mailbox.messages) == 1, what="the resent email")
    assert files_of(world.mailbox.messages[0]) == [f"HI.{world.unique}.f1"]
    assert world.mailbox.messages[0]["Message-ID"].startswith("<fast-")
    assert "-r1@" in world.mailbox.messages[0]["Message-ID"]  # an operator's resend is a new message

    async def recorded() -> bool:  # the server's 250 comes before the commit
        return bool((await cli.status(world.notifier_db))["deliveries"] == {"failed": 1, "sent": 1})

    await eventually(recorded, what="the resend recorded")
    assert (await cli.status(world.notifier_db))["stopped"] == []


async def test_an_smtp_4xx_is_tried_again_later_and_the_email_goes_once(world: World) -> None:
    await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    world.mailbox.reply = "451 4.3.0 try again later"
    data = archived(f"HI.{world.unique}.t1", propid=world.propid)
    await world.catalog.publish(data)

    async def tried() -> bool:
        return bool(await world.rows("SELECT 1 FROM delivery_attempts"))

    await eventually(tried, what="the first attempt")
    [notice] = await world.rows("SELECT state, attempts, next_attempt_at FROM pending_notices")
    assert (notice["state"], notice["attempts"]) == ("pending", 1)
    assert notice["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=20)  # backed off, not hammered
    assert await deliveries(world) == []
    [temporary] = (await cli.status(world.notifier_db))["temporary_failures"]
    assert (temporary["smtp_code"], temporary["smtp_response"]) == (451, "451 4.3.0 try again later")

    world.mailbox.reply = None
    world.deliverer.clock = lambda: datetime.now(UTC) + timedelta(minutes=5)  # the back-off has passed
    world.deliverer.wake.set()
    await eventually(lambda: len(world.mailbox.messages) == 1, what="the email, on the second try")
    await eventually(lambda: none_pending(world), what="the notice sent")
    assert files_of(world.mailbox.messages[0]) == [data.archive_id]
    assert [s for _, s, _ in await deliveries(world)] == ["sent"]
    attempts = await world.rows("SELECT outcome, smtp_code FROM delivery_attempts ORDER BY attempt_id")
    assert [(a["outcome"], a["smtp_code"]) for a in attempts] == [("temporary", 451), ("accepted", 250)]
    assert len(world.mailbox.messages) == 1


async def _digest_waiting(world: World) -> list[str]:
    """Two files for alice's daily digest, their notices recorded and not yet due; returns their archive IDs."""
    await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="daily")
    ids = [f"HI.{world.unique}.d1", f"HI.{world.unique}.d2"]
    for archive_id in ids:
        await world.catalog.publish(archived(archive_id, propid=world.propid))

    async def recorded() -> bool:
        return len(await world.rows("SELECT 1 FROM pending_notices WHERE state = 'pending'")) == 2

    await eventually(recorded, what="the digest's notices")
    return ids


async def _cut_short(task: asyncio.Task[int]) -> None:
    """The notifier killed: its round ends where it stands, without reaching its commit."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_notifier_killed_mid_digest_before_the_server_answers_sends_the_digest_once(world: World) -> None:
    ids = await _digest_waiting(world)
    world.mailbox.stall = True  # the server takes the message and never answers
    first = world.new_deliverer(clock=two_days_on)
    round_ = asyncio.create_task(first.deliver_due())
    await eventually(lambda: world.mailbox.stalled == 1, what="the digest handed to the server")
    await _cut_short(round_)
    world.mailbox.stall = False

    restarted = world.new_deliverer(clock=two_days_on)
    assert await restarted.deliver_due() == 1
    for _ in range(3):
        assert await restarted.deliver_due() == 0

    [digest] = world.mailbox.messages
    assert kind_of(digest) == "digest"
    assert sorted(files_of(digest)) == ids
    assert [(k, s) for k, s, _ in await deliveries(world)] == [("digest", "sent")]


class AcceptedThenKilled:
    """A mailer whose notifier dies in the instant after the server's 250, before it can record it."""

    def __init__(self, world: World) -> None:
        self.inner = SmtpMailer(world.settings)
        self.accepted = asyncio.Event()

    async def send(self, message: EmailMessage) -> SmtpResult:
        await self.inner.send(message)
        self.accepted.set()
        await asyncio.Event().wait()  # never returns: the task is cancelled here
        raise AssertionError("unreachable")


async def test_a_notifier_killed_between_the_servers_250_and_its_commit_resends_under_the_same_message_id(
    world: World,
) -> None:
    """The one window the README names: SMTP cannot make "accepted" and "recorded" one step, so the digest goes
    twice, and the copy is recognisable by its Message-ID."""
    ids = await _digest_waiting(world)
    dying = AcceptedThenKilled(world)
    first = world.new_deliverer(mailer=dying, clock=two_days_on)
    round_ = asyncio.create_task(first.deliver_due())
    await asyncio.wait_for(dying.accepted.wait(), 20)
    await _cut_short(round_)

    restarted = world.new_deliverer(clock=two_days_on)
    assert await restarted.deliver_due() == 1
    assert await restarted.deliver_due() == 0

    assert len(world.mailbox.messages) == 2
    original, copy = world.mailbox.messages
    assert original["Message-ID"] == copy["Message-ID"]
    assert sorted(files_of(original)) == sorted(files_of(copy)) == ids
    assert [(k, s) for k, s, _ in await deliveries(world)] == [("digest", "sent")]  # recorded once


async def test_a_revocation_withholds_the_persons_waiting_notices_of_that_program_at_once(world: World) -> None:
    granted = await world.catalog_api.request(
        "PUT",
        f"/v1/programs/KECK/{world.propid}/members/bob",
        who=world.tokens["alice"],
        json={"role": "collaborator"},
    )
    assert granted.status == 200, await granted.text()
    await world.subscribe("bob", mission="KECK", propid=world.propid, triggers=["new"], frequency="daily")
    await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="daily")
    await world.catalog.publish(archived(f"HI.{world.unique}.v1", propid=world.propid))

    async def states() -> dict[str, str]:
        rows = await world.rows(
            "SELECT s.username, n.state FROM pending_notices n JOIN subscriptions s USING (subscription_id)"
        )
        return {row["username"]: row["state"] for row in rows}

    async def waiting() -> bool:
        return await states() == {"alice": "pending", "bob": "pending"}

    await eventually(waiting, what="both daily notices waiting")

    revoked = await world.catalog_api.request(
        "DELETE", f"/v1/programs/KECK/{world.propid}/members/bob", who=world.tokens["alice"]
    )
    assert revoked.status == 204

    async def dropped() -> bool:
        return await states() == {"alice": "pending", "bob": "withheld"}

    # access.changed came through the bus: bob's notice is withheld before its digest time, alice's waits on.
    await eventually(dropped, what="bob's waiting notice withheld on access.changed")
    assert world.mailbox.messages == []
