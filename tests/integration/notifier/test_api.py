"""The notifier's API beyond create and delete: a subscription changed by its owner, the preview of settings
against the events the notifier recorded, and in-page notices in the inbox, told only to those who may see them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from tests.integration.notifier.conftest import World
from tests.support.catalog import archived
from tests.support.waiting import eventually


async def _count(world: World, query: str, *args: Any) -> int:
    rows = await world.rows(query, *args)
    return int(rows[0][0])


def _text(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())


def _counted(world: World, n: int, query: str, *args: Any) -> Callable[[], Awaitable[bool]]:
    """A condition for ``eventually``: ``query`` counts ``n``."""

    async def condition() -> bool:
        return await _count(world, query, *args) == n

    return condition


async def test_a_subscription_is_changed_by_its_owner_and_waiting_notices_follow_a_new_frequency(world: World) -> None:
    made = await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="daily")
    path = f"/v1/subscriptions/{made['subscription_id']}"
    data = archived(f"HI.{world.unique}.1", propid=world.propid)
    await world.catalog.publish(data)
    await eventually(
        _counted(world, 1, "SELECT count(*) FROM pending_notices WHERE state = 'pending'"),
        what="the daily notice waiting",
    )
    waiting = await world.rows("SELECT due_at FROM pending_notices")
    assert waiting[0]["due_at"] > datetime.now(UTC)

    # Another person's subscription is not there for them; a level that is not KECK's is refused by name.
    status, answer = await world.call("PATCH", path, "bob", {"frequency": "fast"})
    assert (status, answer["code"]) == (404, "not_found")
    status, answer = await world.call("PATCH", path, "alice", {"min_level": "2b"})
    assert status == 400
    assert answer["parameter"] == "min_level"
    assert "KECK" in answer["error"]
    status, answer = await world.call("PATCH", path, "alice", {"colour": "red"})
    assert status == 400

    # A new time of day keeps the waiting notice's due time: only a new frequency re-schedules.
    status, answer = await world.call("PATCH", path, "alice", {"time_of_day": "09:30", "time_zone": "Pacific/Honolulu"})
    assert status == 200, answer
    assert (answer["time_of_day"], answer["time_zone"], answer["frequency"]) == ("09:30", "Pacific/Honolulu", "daily")
    assert [r["due_at"] for r in await world.rows("SELECT due_at FROM pending_notices")] == [waiting[0]["due_at"]]
    assert world.mailbox.messages == []

    status, answer = await world.call(
        "PATCH", path, "alice", {"frequency": "fast", "triggers": ["repro", "new"], "min_level": "0", "or_above": False}
    )

    assert status == 200, answer
    assert (answer["frequency"], answer["triggers"], answer["min_level"], answer["or_above"]) == (
        "fast",
        ["new", "repro"],
        "0",
        False,
    )
    await eventually(lambda: len(world.mailbox.messages) == 1, what="the waiting notice, now fast")
    assert data.archive_id in _text(world.mailbox.messages[0], "plain")
    status, listed = await world.call("GET", "/v1/subscriptions", "alice")
    assert [(s["subscription_id"], s["frequency"]) for s in listed["subscriptions"]] == [
        (made["subscription_id"], "fast")
    ]


async def test_the_email_links_to_the_subscriptions_edit_form(world: World) -> None:
    made = await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    await world.catalog.publish(archived(f"HI.{world.unique}.9", propid=world.propid))
    await eventually(lambda: len(world.mailbox.messages) == 1, what="the fast email")
    edit = f"http://notifier.test/#/subscriptions/{made['subscription_id']}"
    message = world.mailbox.messages[0]
    assert edit in _text(message, "plain")
    assert f'href="{edit}"' in _text(message, "html")


async def test_a_preview_counts_the_recorded_events_as_the_same_settings_matched_them(world: World) -> None:
    real = await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    for n in range(3):
        await world.catalog.publish(archived(f"HI.{world.unique}.p{n}", propid=world.propid))
    # dataset.first once, dataset.new three times: all four in the history, three notices for alice.
    await eventually(
        _counted(world, 4, "SELECT count(*) FROM event_history WHERE propid = $1", world.propid),
        what="four events recorded",
    )
    await eventually(
        _counted(world, 0, "SELECT count(*) FROM pending_notices WHERE state = 'pending'"),
        what="the fast notices sent",
    )
    made = await _count(
        world, "SELECT count(*) FROM pending_notices WHERE subscription_id = $1", real["subscription_id"]
    )
    sent = await _count(world, "SELECT count(*) FROM deliveries WHERE state = 'sent'")
    body = {"mission": "KECK", "propid": world.propid, "triggers": ["new"], "frequency": "fast"}

    status, answer = await world.call("POST", "/v1/subscriptions/preview", "alice", body)

    assert status == 200, answer
    assert answer["days"] == 30
    assert answer["events"] == 4
    assert answer["notices"] == made == 3
    assert answer["by_trigger"] == {"new": 3, "first": 0, "repro": 0, "public": 0}
    assert 1 <= answer["messages"] <= 3
    assert answer["messages"] == sent  # delivery coalesced them the same way (three events within the window)
    times = [r["event_time"] for r in await world.rows("SELECT event_time FROM event_history WHERE type = 'new'")]
    assert datetime.fromisoformat(answer["first"]) == min(times)
    assert datetime.fromisoformat(answer["last"]) == max(times)
    # Every trigger (the default): the first-data event too.
    status, answer = await world.call(
        "POST", "/v1/subscriptions/preview", "alice", {k: v for k, v in body.items() if k != "triggers"}
    )
    assert (answer["notices"], answer["by_trigger"]["first"]) == (4, 1)
    # A level above the events' counts none of them; a daily digest whose hour has not come sent nothing yet.
    status, answer = await world.call("POST", "/v1/subscriptions/preview", "alice", {**body, "min_level": "1"})
    assert (status, answer["events"], answer["notices"], answer["messages"]) == (200, 4, 0, 0)
    # Nothing was kept.
    assert await _count(world, "SELECT count(*) FROM subscriptions") == 1

    # bob is no member of the proprietary program: the preview counts nothing he may not be told of.
    status, answer = await world.call("POST", "/v1/subscriptions/preview", "bob", body)
    assert (status, answer["events"], answer["notices"], answer["messages"]) == (200, 0, 0, 0)
    assert answer["first"] is None
    # carol, an administrator, sees it all.
    status, answer = await world.call("POST", "/v1/subscriptions/preview", "carol", body)
    assert (answer["events"], answer["notices"]) == (4, 3)
    # The body is checked as a create's.
    status, answer = await world.call("POST", "/v1/subscriptions/preview", "alice", {**body, "time_zone": "Mars/Base"})
    assert (status, answer["parameter"]) == (400, "time_zone")


async def test_page_notices_go_to_the_inbox_of_those_who_may_see_them_and_are_marked_read(world: World) -> None:
    await world.subscribe(
        "alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast", channel="page"
    )
    await world.subscribe(
        "bob", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast", channel="page"
    )
    first = archived(f"HI.{world.unique}.i1", propid=world.propid)

    await world.catalog.publish(first)

    async def unread(who: str, n: int) -> bool:
        status, answer = await world.call("GET", "/v1/inbox", who)
        return status == 200 and answer["unread"] == n

    await eventually(lambda: unread("alice", 1), what="alice's in-page notice")
    status, inbox = await world.call("GET", "/v1/inbox", "alice")
    notice = inbox["notices"][0]
    assert notice["read"] is False
    assert (notice["trigger"], notice["mission"], notice["propid"], notice["level"]) == (
        "new",
        "KECK",
        world.propid,
        "0",
    )
    assert world.propid in notice["subject"]
    assert [(f["archive_id"], f["sha256"]) for f in notice["files"]] == [(first.archive_id, first.sha256)]
    assert notice["files"][0]["url"].endswith(f"/v1/files/{first.archive_id}?version=1")
    assert [n["event_id"] for n in notice["notices"]] != []
    # bob, no member of the proprietary program, is told nothing: his notice is withheld, his inbox empty.
    await eventually(
        _counted(world, 1, "SELECT count(*) FROM deliveries WHERE username = 'bob' AND state = 'withheld'"),
        what="bob's notice withheld",
    )
    status, answer = await world.call("GET", "/v1/inbox", "bob")
    assert answer == {"notices": [], "unread": 0}
    # One channel per subscription: no email.
    assert world.mailbox.messages == []

    second = archived(f"HI.{world.unique}.i2", propid=world.propid)
    await world.catalog.publish(second)
    await eventually(lambda: unread("alice", 2), what="the second in-page notice (after the coalescing window)")

    # Newest first, a page at a time.
    status, page = await world.call("GET", "/v1/inbox?limit=1", "alice")
    assert [f["archive_id"] for f in page["notices"][0]["files"]] == [second.archive_id]
    newest = page["notices"][0]["id"]
    status, page = await world.call("GET", f"/v1/inbox?limit=1&before={newest}", "alice")
    assert [f["archive_id"] for f in page["notices"][0]["files"]] == [first.archive_id]
    status, answer = await world.call("GET", "/v1/inbox?limit=0", "alice")
    assert (status, answer["parameter"]) == (400, "limit")

    # bob cannot mark alice's notice; alice marks one, then all.
    status, answer = await world.call("POST", "/v1/inbox/read", "bob", {"ids": [newest]})
    assert answer == {"marked": 0, "unread": 0}
    status, answer = await world.call("POST", "/v1/inbox/read", "alice", {"ids": [newest]})
    assert answer == {"marked": 1, "unread": 1}
    status, inbox = await world.call("GET", "/v1/inbox", "alice")
    assert [n["read"] for n in inbox["notices"]] == [True, False]
    status, answer = await world.call("POST", "/v1/inbox/read", "alice", {})
    assert status == 400
    status, answer = await world.call("POST", "/v1/inbox/read", "alice", {"all": True})
    assert answer == {"marked": 1, "unread": 0}


async def test_an_email_subscription_made_a_webhook_gets_a_secret_once_and_no_private_receiver(world: World) -> None:
    made = await world.subscribe("alice", mission="KECK", propid=world.propid)
    path = f"/v1/subscriptions/{made['subscription_id']}"
    world.dns["intranet.example"] = ["10.20.30.40"]

    status, answer = await world.call(
        "PATCH", path, "alice", {"channel": "webhook", "webhook_url": "https://intranet.example/hook"}
    )
    assert (status, answer["parameter"]) == (400, "webhook_url")
    assert "10.20.30.40" in answer["error"]
    status, answer = await world.call(
        "POST",
        "/v1/subscriptions",
        "alice",
        {"mission": "KECK", "propid": world.propid, "channel": "webhook", "webhook_url": "https://intranet.example/"},
    )
    assert (status, answer["parameter"]) == (400, "webhook_url")

    status, answer = await world.call(
        "PATCH", path, "alice", {"channel": "webhook", "webhook_url": "https://receiver.example/hook"}
    )
    assert status == 200, answer
    assert answer["webhook_secret"].startswith("whsec_")
    status, answer = await world.call("PATCH", path, "alice", {"frequency": "weekly"})
    assert (answer["channel"], answer["webhook_url"], answer["webhook_secret"]) == (
        "webhook",
        "https://receiver.example/hook",
        None,
    )
    status, answer = await world.call("PATCH", path, "alice", {"channel": "page"})
    assert (status, answer["channel"], answer["webhook_url"]) == (200, "page", None)
    rows = await world.rows("SELECT webhook_secret FROM subscriptions")
    assert rows[0]["webhook_secret"] is None


async def test_a_jwst_subscription_that_names_no_level_is_for_2b_or_above_and_a_keck_one_for_every_level(
    world: World,
) -> None:
    jwst = await world.subscribe("alice", mission="JWST", propid=f"J{world.unique}")
    keck = await world.subscribe("alice", mission="KECK", propid=world.propid)
    chosen = await world.subscribe("alice", mission="JWST", propid=f"J{world.unique}", min_level="1B")

    assert (jwst["min_level"], jwst["or_above"]) == ("2b", True)
    assert keck["min_level"] is None
    assert chosen["min_level"] == "1b"
    # Cleared by a change, the level is the mission's default again.
    status, answer = await world.call(
        "PATCH", f"/v1/subscriptions/{chosen['subscription_id']}", "alice", {"min_level": None}
    )
    assert (status, answer["min_level"]) == (200, "2b")


async def test_a_preview_of_one_file_counts_the_events_that_named_it(world: World) -> None:
    files = [archived(f"HI.{world.unique}.f{n}", propid=world.propid) for n in range(2)]
    for data in files:
        await world.catalog.publish(data)
    await eventually(
        _counted(world, 3, "SELECT count(*) FROM event_history WHERE propid = $1", world.propid),
        what="first, new, new recorded",
    )
    named = await _count(world, "SELECT count(*) FROM event_history WHERE $1 = ANY(archive_ids)", files[1].archive_id)

    status, answer = await world.call(
        "POST", "/v1/subscriptions/preview", "alice", {"archive_id": files[1].archive_id, "frequency": "fast"}
    )

    assert status == 200, answer
    assert answer["events"] == answer["notices"] == named >= 1
    assert answer["by_trigger"]["new"] == 1


async def test_the_delivery_loop_forgets_events_older_than_previews_look(world: World) -> None:
    now = datetime.now(UTC)
    for event_id, age in (("old", timedelta(days=32)), ("recent", timedelta(days=29))):
        await world.notifier_db.pool.execute(
            "INSERT INTO event_history (event_id, event_time, type, mission, propid, level, obsets, archive_ids, "
            "files) VALUES ($1, $2, 'new', 'KECK', $3, '0', '{}', '{}', 0)",
            f"{world.unique}-{event_id}",
            now - age,
            world.propid,
        )

    assert await world.deliverer.prune_history(now) >= 1

    rows = await world.rows("SELECT event_id FROM event_history WHERE propid = $1", world.propid)
    assert [r["event_id"] for r in rows] == [f"{world.unique}-recent"]


async def test_the_levels_a_subscription_may_name_are_the_configurations(world: World) -> None:
    response = await world.notifier.get("/v1/subscriptions/levels")  # configuration: no sign-in

    assert response.status == 200
    missions = {m["mission"]: m for m in (await response.json())["missions"]}
    assert missions["JWST"] == {"mission": "JWST", "levels": ["1b", "2a", "2b", "3"], "default_level": "2b"}
    assert missions["KECK"] == {"mission": "KECK", "levels": ["0", "1", "2"], "default_level": None}
