"""Subscriptions and the inbox on the observer page, in a real browser against the real archive and notifier.

An observer subscribes from the files view ("Notify me") with a preview of what the subscription would have
sent before saving it, edits and deletes it; an "on this page" subscription's notices arrive in the inbox,
with the masthead's unread badge, and reading them clears it. Screenshots go to /tmp/shots/.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, expect

from services.catalog import cli as catalog
from skyport.db import Database
from skyport.instruments import InstrumentCatalog
from skyport.simulator import SimulatedFile, Simulator
from tests.browser.conftest import NotifyingArchive, Observers
from tests.support.flow import Flow
from tests.support.waiting import eventually

SHOTS = Path("/tmp/shots")
PHONE = 375


async def observer_of(flow: Flow, propid: str, username: str) -> str:
    """The PI of a new Keck program, with an email address the notifier writes to; their token."""
    db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=1)
    try:
        await catalog.add_user(db, username, email=f"{username}@example.org")
        token = await catalog.issue_token(db, username)
    finally:
        await db.close()
    await flow.skyport("catalog", "add-program", "KECK", propid, "--pi", username)
    return token


async def write(flow: Flow, instruments: InstrumentCatalog, unique: str, propid: str, salt: int) -> str:
    """A raw HIRES file of the program written as the instrument does; its archive ID."""
    sim = Simulator(instruments, flow.watch_root, seed=(int(unique, 16) + salt) % 2**31, programs={"KECK": [propid]})
    simulated: SimulatedFile = await asyncio.to_thread(sim.write_file, "HIRES", "raw", size_bytes=200_000)
    assert simulated.archive_id is not None
    return simulated.archive_id


async def notifier_api(flow: Flow, token: str, method: str, path: str, body: Any = None) -> Any:
    """The notifier's answer through the gateway, as a script would ask it."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, flow.gateway_url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json()


async def shoot(page: Page, name: str) -> None:
    """The page as it looks now, at desktop width and at a phone's (375 px), for a person to look at."""
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    size = page.viewport_size
    assert size is not None
    await page.screenshot(path=SHOTS / f"{name}-desktop.png", full_page=True)
    await page.set_viewport_size({"width": PHONE, "height": 800})
    await page.screenshot(path=SHOTS / f"{name}-phone.png", full_page=True)
    await page.set_viewport_size(size)


async def test_an_observer_subscribes_from_the_files_view_with_a_preview_then_edits_and_deletes(
    notifying_archive: NotifyingArchive,
    notified_observers: Observers,
    instruments: InstrumentCatalog,
    propid: str,
    unique: str,
) -> None:
    flow = notifying_archive.flow
    token = await observer_of(flow, propid, "alice")
    program = {"mission": "KECK", "propid": propid}
    archive_id = await write(flow, instruments, unique, propid, salt=0)

    # The notifier has the file's event before the form opens, so the preview has something to count.
    async def previewed() -> bool:
        answer = await notifier_api(flow, token, "POST", "/v1/subscriptions/preview", program)
        return bool(answer["notices"] >= 1)

    await eventually(previewed, timeout=60, what="the notifier's preview to count the file's event")

    tab = await notified_observers.open(timezone_id="Europe/Paris")
    page = tab.page
    await tab.sign_in(token)
    await expect(page.locator(f'#file-rows tr[data-archive-id="{archive_id}"]')).to_be_visible(timeout=30_000)

    # The form's address may name one file (a link about a file opens the form about it).
    await page.goto(f"/#/subscriptions/new?archive_id={archive_id}")
    await expect(page.get_by_test_id("target-file")).to_be_checked(timeout=15_000)
    await expect(page.get_by_label("Archive ID")).to_have_value(archive_id)

    # "Notify me" about the program chosen in the files view fills the program in.
    await page.get_by_role("button", name="Files").click()
    await page.get_by_test_id("filter-program").select_option(f"KECK/{propid}")
    await shoot(page, "files-notify-me")
    await page.get_by_role("link", name=f"Notify me about KECK/{propid}").click()
    form = page.get_by_test_id("subscription-form")
    await expect(form.get_by_role("heading", name="New subscription")).to_be_focused()
    await expect(page.get_by_label("Mission")).to_have_value("KECK")
    await expect(page.get_by_label("Program ID")).to_have_value(propid)
    await expect(page.get_by_label("Time zone")).to_have_value("Europe/Paris")  # the browser's

    # Before anything is saved, the preview counts what these settings would have sent.
    preview = page.get_by_test_id("subscription-preview")
    # The file is new, and the program's first: two events, held for a daily digest not due yet, or sent at once.
    await expect(preview).to_have_text(
        "Over the last 30 days these settings would have sent no email yet: 2 events wait for the next digest."
    )
    await page.get_by_label("How often").select_option("fast")
    # (fast: the first at once, the other folded into the next notice after the coalescing window)
    await expect(preview).to_have_text("Over the last 30 days these settings would have sent 2 emails about 2 events.")
    # The levels are the mission's, lowest first; level 1 or above leaves out the raw file.
    level = page.get_by_label("Level")
    await expect(level.locator("option")).to_have_text(["Every level", "Level 0", "Level 1", "Level 2"])
    await level.select_option("1")
    await expect(preview).to_have_text(
        "Over the last 30 days these settings would have sent nothing (2 events, none of these kinds or levels)."
    )
    await level.select_option("")
    # A time zone that does not exist: the notifier's own words, in the preview and when saving.
    await page.get_by_label("How often").select_option("daily")
    await page.get_by_label("Time zone").fill("Mars/Olympus_Mons")
    await expect(preview).to_contain_text("No preview: ")
    await expect(preview).to_contain_text("Mars/Olympus_Mons")
    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_test_id("subscription-form-error")).to_contain_text("Could not save: ")
    await page.get_by_label("Time zone").fill("Europe/Paris")
    await expect(page.get_by_test_id("subscription-form-error")).to_be_hidden()
    await page.get_by_label("How often").select_option("fast")
    await page.get_by_label("First data of the program").uncheck()
    await expect(preview).to_have_text("Over the last 30 days these settings would have sent 1 email about 1 event.")
    await shoot(page, "subscription-form")
    assert await notifier_api(flow, token, "GET", "/v1/subscriptions") == {"subscriptions": []}, "nothing saved yet"

    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_test_id("subscriptions-message")).to_have_text(f"Subscribed to KECK/{propid}.")
    await expect(page).to_have_url(re.compile(r"#/subscriptions$"))
    rows = page.get_by_test_id("subscription-row")
    await expect(rows).to_have_count(1)
    await expect(rows.locator('[data-column="triggers"]')).to_have_text("New data, Reprocessed, Made public")
    await expect(rows.locator('[data-column="frequency"]')).to_have_text("As it happens")
    await expect(rows.locator('[data-column="channel"]')).to_have_text("Email to alice@example.org")
    [kept] = (await notifier_api(flow, token, "GET", "/v1/subscriptions"))["subscriptions"]
    assert (kept["mission"], kept["propid"], kept["time_zone"]) == ("KECK", propid, "Europe/Paris")
    assert (kept["triggers"], kept["frequency"]) == (["new", "repro", "public"], "fast")
    await shoot(page, "subscriptions-list")

    # Edit: the row's link is the address an email links to.
    await rows.get_by_role("link", name=f"Edit the subscription to KECK/{propid}").click()
    await expect(page).to_have_url(re.compile(rf"#/subscriptions/{kept['subscription_id']}$"))
    await expect(form.get_by_role("heading")).to_have_text(f"Edit your subscription to KECK/{propid}")
    await expect(page.get_by_label("First data of the program")).not_to_be_checked()
    await page.get_by_label("How often").select_option("weekly")
    await page.get_by_label("At", exact=True).fill("07:30")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_test_id("subscriptions-message")).to_have_text(
        f"Saved your subscription to KECK/{propid}."
    )
    await expect(rows.locator('[data-column="frequency"]')).to_have_text("Weekly at 07:30 (Europe/Paris)")
    [changed] = (await notifier_api(flow, token, "GET", "/v1/subscriptions"))["subscriptions"]
    assert (changed["frequency"], changed["time_of_day"]) == ("weekly", "07:30")

    # An email's edit link opens the form straight away, after signing in.
    await page.goto(f"/#/subscriptions/{kept['subscription_id']}")
    await expect(page.get_by_label("How often")).to_have_value("weekly", timeout=15_000)
    await page.get_by_role("link", name="Cancel").click()

    # Delete asks first.
    await rows.get_by_role("button", name=f"Delete the subscription to KECK/{propid}").click()
    await rows.get_by_role("button", name=f"Confirm: delete the subscription to KECK/{propid}").click()
    await expect(page.get_by_test_id("subscriptions-message")).to_have_text(
        f"Deleted your subscription to KECK/{propid}."
    )
    await expect(page.get_by_test_id("subscriptions-empty")).to_be_visible()
    assert await notifier_api(flow, token, "GET", "/v1/subscriptions") == {"subscriptions": []}

    # A webhook about one file: the form says what is missing, and the signing secret is shown once.
    await page.get_by_role("link", name="Add a subscription").click()
    await page.get_by_label("One file").check()
    await page.get_by_label("Archive ID").fill(archive_id)
    await page.get_by_label("Webhook", exact=True).check()
    await expect(preview).to_contain_text("Enter the address the webhook is sent to.")
    await page.get_by_label("Webhook address (https)").fill("http://127.0.0.1:9/hook")
    await expect(preview).to_contain_text("Over the last 30 days these settings would have sent ")
    await page.get_by_role("button", name="Subscribe").click()
    message = page.get_by_test_id("subscriptions-message")
    await expect(message).to_contain_text(f"Subscribed to file {archive_id}. Your webhook's signing secret")
    [hook] = (await notifier_api(flow, token, "GET", "/v1/subscriptions"))["subscriptions"]
    assert (hook["archive_id"], hook["channel"], hook["webhook_url"]) == (
        archive_id,
        "webhook",
        "http://127.0.0.1:9/hook",
    )
    await expect(rows.locator('[data-column="channel"]')).to_have_text("Webhook to http://127.0.0.1:9/hook")


async def test_an_archived_file_of_a_page_subscription_arrives_in_the_inbox_and_reading_it_clears_the_badge(
    notifying_archive: NotifyingArchive,
    notified_observers: Observers,
    instruments: InstrumentCatalog,
    propid: str,
    unique: str,
) -> None:
    flow = notifying_archive.flow
    token = await observer_of(flow, propid, "carol")
    tab = await notified_observers.open()
    page = tab.page
    await tab.sign_in(token)
    badge = page.get_by_test_id("unread-count")
    await expect(page.get_by_test_id("inbox-link")).to_have_accessible_name("Inbox: 0 unread notices")
    await expect(badge).to_be_hidden()

    await page.get_by_role("link", name="Inbox: 0 unread notices").click()
    await expect(page.get_by_test_id("inbox-empty")).to_be_visible()
    await page.get_by_role("link", name="Subscriptions").click()
    await page.get_by_label("Mission").fill("KECK")
    await page.get_by_label("Program ID").fill(propid)
    await page.get_by_label("How often").select_option("fast")
    # New files only: a program's first file is also its "first" event, a notice of its own.
    for trigger in ("First data of the program", "Reprocessed", "Made public"):
        await page.get_by_label(trigger).uncheck()
    await page.get_by_label("On this page (inbox)").check()
    await expect(page.get_by_test_id("subscription-preview")).to_have_text(
        "Over the last 30 days these settings would have sent nothing."
    )
    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_test_id("subscription-row").locator('[data-column="channel"]')).to_have_text(
        "On this page"
    )
    await page.get_by_role("button", name="Files").click()

    first = await write(flow, instruments, unique, propid, salt=1)
    await expect(badge).to_have_text("1", timeout=40_000)
    await expect(page.get_by_test_id("inbox-link")).to_have_accessible_name("Inbox: 1 unread notice")
    second = await write(flow, instruments, unique, propid, salt=2)
    await expect(badge).to_have_text("2", timeout=40_000)

    await page.get_by_test_id("inbox-link").click()
    notices = page.get_by_test_id("notice")
    await expect(notices).to_have_count(2)
    await shoot(page, "inbox-unread")
    newest, oldest = notices.nth(0), notices.nth(1)
    await expect(newest.get_by_test_id("notice-subject")).to_contain_text(propid)
    await expect(newest).to_have_attribute("data-read", "false")
    await newest.locator("summary").click()  # opening it marks it read
    await expect(newest.locator(f'[data-archive-id="{second}"]')).to_be_visible()
    await expect(newest.get_by_role("button", name=f"Download {second}")).to_be_visible()
    await expect(newest).to_have_attribute("data-read", "true")
    await expect(badge).to_have_text("1")
    await oldest.locator("summary").focus()
    await page.keyboard.press("Enter")  # the keyboard opens a notice too
    await expect(oldest.locator(f'[data-archive-id="{first}"]')).to_be_visible()
    await expect(badge).to_be_hidden()
    await shoot(page, "inbox")

    # A third notice, and "Mark all read".
    await page.get_by_role("button", name="Files").click()
    third = await write(flow, instruments, unique, propid, salt=3)
    await expect(badge).to_have_text("1", timeout=40_000)
    await page.get_by_test_id("inbox-link").click()
    await expect(notices).to_have_count(3)
    await expect(notices.nth(0).locator("summary")).to_contain_text("Unread")
    await page.get_by_role("button", name="Mark all read").click()
    await expect(page.get_by_test_id("inbox-message")).to_have_text("Every notice is marked read.")
    await expect(badge).to_be_hidden()
    await expect(page.locator('[data-testid="notice"][data-read="false"]')).to_have_count(0)
    inbox = await notifier_api(flow, token, "GET", "/v1/inbox")
    assert inbox["unread"] == 0
    listed = [f["archive_id"] for n in inbox["notices"] for f in n["files"]]
    assert sorted(listed) == sorted([first, second, third])


async def test_a_gateway_without_a_notifier_says_notifications_are_not_configured(
    flow: Flow, browser: Browser, propid: str
) -> None:
    await flow.start("catalog")
    await flow.start("gateway", gateway_notifier_url="")  # empty: unset, as compose writes an unset variable
    token = await observer_of(flow, propid, "dave")
    tabs = Observers(browser, flow)
    try:
        tab = await tabs.open()
        await tab.sign_in(token)
        await tab.page.get_by_role("button", name="Subscriptions").click()
        await expect(tab.page.get_by_test_id("subscriptions-error")).to_have_text(
            "Cannot read your subscriptions: notifications are not configured on this gateway "
            "(its SKYPORT_GATEWAY_NOTIFIER_URL is unset)"
        )
        await expect(tab.page.get_by_test_id("inbox-link")).to_have_count(0)  # no badge to mislead
    finally:
        errors = await tabs.close()
    assert errors == [], f"the page reported errors: {errors}"
