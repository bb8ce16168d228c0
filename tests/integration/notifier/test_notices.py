"""The notifier end to end within one process: files catalogued, dataset events on the real bus, emails received
by an SMTP server, and who is told what decided by the catalog when each notice is sent."""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.integration.notifier.conftest import World
from tests.support.catalog import archived
from tests.support.waiting import eventually


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def attachment_of(message: EmailMessage) -> dict[str, object]:
    for part in message.iter_attachments():
        if part.get_filename() == "skyport-notice.json":
            return dict(json.loads(part.get_content()))
    raise AssertionError("no JSON attachment")


async def delivery_states(world: World) -> list[str]:
    return [row["state"] for row in await world.rows("SELECT state FROM deliveries ORDER BY delivery_id")]


async def test_a_file_archived_for_a_subscribed_program_makes_one_fast_email(world: World) -> None:
    subscription = await world.subscribe(
        "alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast"
    )
    data = archived(f"HI.{world.unique}.1", propid=world.propid)

    await world.catalog.publish(data)

    await eventually(lambda: len(world.mailbox.messages) == 1, what="the fast email")
    await eventually(lambda: _none_pending(world), what="no notice left pending")
    message = world.mailbox.messages[0]
    assert message["To"] == "alice@example.org"
    assert world.propid in message["Subject"]
    assert "Hot Jupiters" in message["Subject"]
    text = text_of(message)
    url = f"https://archive.test/v1/files/{data.archive_id}?version=1"
    assert data.sha256 in text
    assert url in text
    assert "Hot Jupiters" in text
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    assert data.sha256 in str(html_part.get_content())
    notice = attachment_of(message)["notices"][0]  # type: ignore[index]
    assert {k: notice[k] for k in ("mission", "propid", "obsets", "level", "type")} == {
        "mission": "KECK",
        "propid": world.propid,
        "obsets": [],
        "level": "0",
        "type": "new",
    }
    assert [(f["archive_id"], f["sha256"], f["size_bytes"]) for f in notice["files"]] == [
        (data.archive_id, data.sha256, data.size_bytes)
    ]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(subscription["subscription_id"]) in message["List-Unsubscribe"]
    # The download-everything link: the notice's files as a script, to anyone holding the signed link.
    download = next(line.strip() for line in text.splitlines() if "/download-script?" in line)
    script = await world.notifier.get(urlsplit(download).path + "?" + urlsplit(download).query)
    assert script.status == 200
    assert url in await script.text()
    assert len(world.mailbox.messages) == 1


async def _none_pending(world: World) -> bool:
    rows = await world.rows("SELECT count(*) AS n FROM pending_notices WHERE state = 'pending'")
    return bool(rows[0]["n"] == 0) and bool(await world.rows("SELECT 1 FROM deliveries WHERE state = 'sent'"))


async def test_a_non_member_hears_nothing_of_proprietary_data_until_it_is_public(world: World) -> None:
    await world.subscribe("bob", mission="KECK", propid=world.propid, frequency="fast")
    data = archived(f"HI.{world.unique}.2", propid=world.propid)

    await world.catalog.publish(data)

    # dataset.first and dataset.new came and were decided: withheld, since bob is no member and nothing is public.
    async def withheld() -> bool:
        rows = await world.rows("SELECT event_type, state FROM pending_notices ORDER BY notice_id")
        return len(rows) == 2 and all(row["state"] == "withheld" for row in rows)

    await eventually(withheld, what="bob's notices withheld")
    assert world.mailbox.messages == []

    released = await world.catalog_api.request(
        "POST", f"/v1/programs/KECK/{world.propid}/release", who=world.tokens["alice"], json={}
    )
    assert released.status == 200, await released.text()

    await eventually(lambda: len(world.mailbox.messages) == 1, what="the public notice")
    message = world.mailbox.messages[0]
    assert message["To"] == "bob@example.org"
    notices: Any = attachment_of(message)["notices"]
    assert [n["type"] for n in notices] == ["public"]
    assert data.archive_id in text_of(message)


async def test_the_unsubscribe_link_works_without_signing_in_and_cannot_be_forged(world: World) -> None:
    mine = await world.subscribe("alice", mission="KECK", propid=world.propid, triggers=["new"], frequency="fast")
    other = await world.subscribe("bob", mission="KECK", propid=world.propid, triggers=["public"])
    await world.catalog.publish(archived(f"HI.{world.unique}.3", propid=world.propid))
    await eventually(lambda: len(world.mailbox.messages) == 1, what="alice's email")
    link = urlsplit(world.mailbox.messages[0]["List-Unsubscribe"].strip("<>"))
    query = parse_qs(link.query)
    assert query["s"] == [str(mine["subscription_id"])]

    # The signature of alice's subscription does not end bob's; nor does a made-up one.
    for ids, sig in ((str(other["subscription_id"]), query["sig"][0]), (query["s"][0], "0" * 64)):
        refused = await world.notifier.post(link.path, params={"s": ids, "sig": sig})
        assert refused.status == 400
    # Following the link in a browser asks first: a mail scanner's GET changes nothing.
    page = await world.notifier.get(link.path + "?" + link.query)
    assert page.status == 200
    assert "<form" in await page.text()
    assert [r["active"] for r in await world.rows("SELECT active FROM subscriptions ORDER BY subscription_id")] == [
        True,
        True,
    ]

    done = await world.notifier.post(link.path + "?" + link.query, data={"List-Unsubscribe": "One-Click"})

    assert done.status == 200
    rows = await world.rows("SELECT subscription_id, active FROM subscriptions ORDER BY subscription_id")
    assert [(r["subscription_id"], r["active"]) for r in rows] == [
        (mine["subscription_id"], False),
        (other["subscription_id"], True),
    ]
