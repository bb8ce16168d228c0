"""The observer page in a real browser: files written by the simulator reach the table live, and the page
filters, sorts, downloads and manages a program's members through the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Download, Locator, Page, expect

from skyport.instruments import InstrumentCatalog
from skyport.simulator import SimulatedFile, Simulator
from tests.browser.conftest import Observers
from tests.support.flow import Flow
from tests.support.waiting import eventually

# The acceptance: a file shows in the table within this many seconds of the simulator having written it.
NEW_FILE_DEADLINE_S = 2.0

# Resolves with the first row of the table that is not among ``known``, and the moment (ms since the epoch) it
# was put into the document. Installed before the file is written, so that the time is the page's own.
_WATCH_FOR_NEW_ROW = """(known) => {
  const body = document.getElementById("file-rows");
  const old = new Set(known);
  window.__newRow = new Promise((resolve) => {
    const look = () => {
      for (const tr of body.querySelectorAll("tr[data-archive-id]")) {
        if (!old.has(tr.dataset.archiveId)) {
          observer.disconnect();
          resolve({archiveId: tr.dataset.archiveId, at: Date.now()});
          return;
        }
      }
    };
    const observer = new MutationObserver(look);
    observer.observe(body, {childList: true});
    look();
  });
}"""


# Resolves once the page has rendered what it had received (its renders are batched per frame).
_NEXT_FRAME = "() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))"


def row(page: Page, archive_id: str) -> Locator:
    return page.locator(f'#file-rows tr[data-archive-id="{archive_id}"]')


def column(page: Page, archive_id: str, name: str) -> Locator:
    return row(page, archive_id).locator(f'[data-column="{name}"]')


async def shown_ids(page: Page) -> list[str]:
    ids = await page.locator("#file-rows tr").evaluate_all("rows => rows.map(r => r.dataset.archiveId)")
    return [str(i) for i in ids]


async def expect_rows(page: Page, expected: list[str], *, ordered: bool = False, timeout: float = 10) -> None:
    """The table shows exactly ``expected`` (in that order when ``ordered``)."""
    last: list[str] = []

    async def shows() -> bool:
        nonlocal last
        last = await shown_ids(page)
        return last == expected if ordered else sorted(last) == sorted(expected)

    try:
        await eventually(shows, timeout=timeout, what="the table's rows")
    except AssertionError:
        raise AssertionError(f"the table shows {last}, not {expected}") from None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def simulator(flow: Flow, instruments: InstrumentCatalog, unique: str, propid: str, salt: int = 0) -> Simulator:
    return Simulator(instruments, flow.watch_root, seed=(int(unique, 16) + salt) % 2**31, programs={"KECK": [propid]})


async def write(sim: Simulator, instrument: str, product: str, size_bytes: int) -> SimulatedFile:
    """Write a file as the instrument does, off the event loop (the browser and the services keep running)."""
    simulated = await asyncio.to_thread(sim.write_file, instrument, product, size_bytes=size_bytes)
    assert simulated.archive_id is not None
    return simulated


async def program_with_pi(flow: Flow, propid: str, pi: str) -> str:
    """A program whose PI is ``pi``; the PI's token."""
    token = await flow.user_token(pi)
    await flow.skyport("catalog", "add-program", "KECK", propid, "--pi", pi)
    return token


async def archived_sha256(flow: Flow, archive_id: str) -> str:
    rows = [r for r in await flow.archived() if r["archive_id"] == archive_id]
    assert len(rows) == 1, f"{archive_id}: {len(rows)} archived versions"
    return str(rows[0]["sha256"])


async def test_the_page_signs_in_and_shows_each_new_file_within_two_seconds_of_its_writing(
    archive: Flow, observers: Observers, instruments: InstrumentCatalog, propid: str, unique: str
) -> None:
    token = await program_with_pi(archive, propid, "alice")
    tab = await observers.open()
    page = tab.page
    addresses: list[str] = []
    page.on("request", lambda request: addresses.append(request.url))
    page.on("websocket", lambda socket: addresses.append(socket.url))

    await page.goto("/")
    await expect(page.get_by_test_id("connection-state")).to_have_text("Signed out")
    await page.get_by_label("API token").fill("not-a-token-of-anyone")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("signin-error")).to_contain_text("token is unknown or revoked")
    await expect(page.get_by_test_id("files-table")).to_be_hidden()

    await tab.sign_in(token)
    await expect(page.get_by_test_id("user-name")).to_have_text("alice")
    await expect(page.get_by_test_id("program-list")).to_have_text(f"KECK/{propid} (PI)")
    await expect(page.get_by_test_id("connection-state")).to_have_text("Live")

    sim = simulator(archive, instruments, unique, propid)
    latencies: list[float] = []
    written: list[SimulatedFile] = []
    for size in (300_000, 1_000_000, 3_000_000):
        await page.evaluate(_WATCH_FOR_NEW_ROW, [f.archive_id for f in written])
        simulated = await write(sim, "HIRES", "raw", size)
        seen: dict[str, Any] = await asyncio.wait_for(page.evaluate("() => window.__newRow"), 60)
        assert seen["archiveId"] == simulated.archive_id
        latencies.append(seen["at"] / 1000 - simulated.closed_at.timestamp())
        written.append(simulated)
        assert simulated.archive_id is not None
        await expect(row(page, simulated.archive_id)).to_be_visible()
        await expect(column(page, simulated.archive_id, "original_filename")).to_have_text(simulated.path.name)
        await expect(column(page, simulated.archive_id, "instrument_name")).to_have_text("HIRES")
        await expect(column(page, simulated.archive_id, "level")).to_have_text("0")
        await expect(column(page, simulated.archive_id, "program")).to_have_text(f"KECK/{propid}")
        await expect(column(page, simulated.archive_id, "state")).to_have_text("New")
    print(f"\nfile written -> row in the table: {', '.join(f'{s:.3f}' for s in latencies)} s")
    assert max(latencies) < NEW_FILE_DEADLINE_S, f"file-to-table latencies {latencies} s"
    await expect(page.get_by_test_id("file-count")).to_have_text("3 files")

    # Released early by the PI: the same archive ID comes again, public, and its row is replaced.
    released = written[0].archive_id
    assert released is not None
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{archive.catalog_url}/v1/programs/KECK/{propid}/release",
            json={"archive_ids": [released]},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
    await expect(column(page, released, "state")).to_have_text("Public", timeout=30_000)
    await expect_rows(page, [f.archive_id for f in written if f.archive_id])
    await expect(page.get_by_test_id("file-count")).to_have_text("3 files")

    # The token lives in this tab's sessionStorage: a reload stays signed in, and the night comes back as backlog.
    await page.reload()
    await expect(page.get_by_test_id("connection-state")).to_have_text("Live", timeout=15_000)
    await expect_rows(page, [f.archive_id for f in written if f.archive_id])

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_test_id("signin")).to_be_visible()
    await expect(page.get_by_test_id("connection-state")).to_have_text("Signed out")
    assert await page.evaluate("() => sessionStorage.length") == 0
    streams = [a for a in addresses if a.startswith("ws://")]
    assert len(streams) >= 2  # the first sign-in and the reload (and any reconnection)
    assert all("ticket=tk_" in a for a in streams)
    assert not [a for a in addresses if token in a], "the token appeared in an address"


async def test_the_table_filters_searches_and_sorts(
    archive: Flow, observers: Observers, instruments: InstrumentCatalog, propid: str, unique: str
) -> None:
    other = propid.replace("2026B", "2026A")  # PROGNAME is <semester>_<letter><3 digits>
    token = await program_with_pi(archive, propid, "alice")
    await archive.skyport("catalog", "add-program", "KECK", other, "--pi", "alice")
    tab = await observers.open()
    page = tab.page
    await tab.sign_in(token)

    hires = simulator(archive, instruments, unique, propid)
    kcwi = simulator(archive, instruments, unique, other, salt=1)
    files = [
        await write(hires, "HIRES", "raw", 700_000),
        await write(kcwi, "KCWI", "raw", 400_000),
        await write(hires, "HIRES", "raw", 200_000),
        await write(kcwi, "KCWI", "quicklook", 1_000_000),
    ]
    ids = [f.archive_id for f in files if f.archive_id]
    await expect_rows(page, ids, timeout=60)
    hires_ids, kcwi_ids = ids[0::2], ids[1::2]

    filters = page.get_by_role("search")
    await filters.get_by_label("Program").select_option(f"KECK/{other}")
    await expect_rows(page, kcwi_ids)
    await expect(page.get_by_test_id("file-count")).to_have_text("Showing 2 of 4 files")
    await filters.get_by_label("Program").select_option("")

    await page.get_by_label("Instrument").select_option("HIRES")
    await expect_rows(page, hires_ids)
    await page.get_by_label("Instrument").select_option("")

    await page.get_by_label("Level").select_option("1")
    await expect_rows(page, [ids[3]])
    await page.get_by_label("Level").select_option("")

    await page.get_by_label("State").select_option("public")
    await expect_rows(page, [])
    await expect(page.get_by_test_id("file-count")).to_have_text("Showing 0 of 4 files")
    await page.get_by_label("State").select_option("new")
    await expect_rows(page, ids)
    await page.get_by_label("State").select_option("")

    await page.get_by_label("Search").fill(files[2].path.name)
    await expect_rows(page, [ids[2]])
    await page.get_by_label("Search").fill("")
    await expect_rows(page, ids)

    by_size = [f.archive_id for f in sorted(files, key=lambda f: f.size_bytes) if f.archive_id]
    await page.get_by_role("button", name="Size", exact=True).click()
    await expect_rows(page, by_size, ordered=True)
    await expect(page.locator('th[data-column="size_bytes"]')).to_have_attribute("aria-sort", "ascending")
    await page.get_by_role("button", name="Size", exact=True).click()
    await expect_rows(page, by_size[::-1], ordered=True)
    await expect(page.locator('th[data-column="size_bytes"]')).to_have_attribute("aria-sort", "descending")

    # The page follows tonight at Keck (Hawaii, noon to noon), the simulated night; another night shows its own
    # files (none), then tonight's come back from the backlog.
    night = page.get_by_label("Night", exact=True)
    tonight = hires.night_of("KECK")
    await expect(night).to_have_value(tonight.isoformat())
    state = page.get_by_test_id("connection-state")
    await night.fill((tonight - timedelta(days=1)).isoformat())
    await expect(state).to_have_text("Live")
    await page.evaluate(_NEXT_FRAME)
    assert await shown_ids(page) == []
    await expect(page.get_by_test_id("file-count")).to_have_text("No files yet")
    # A file of tonight arriving meanwhile is not listed under the night shown (a reload would not list it
    # there either), but the page says so, and takes the observer to its night.
    late = (await write(hires, "HIRES", "raw", 100_000)).archive_id
    assert late is not None
    note = page.get_by_test_id("other-night")
    said = f"1 new file of the night of {tonight.isoformat()} is not shown"
    await expect(note).to_contain_text(said, timeout=60_000)
    assert await shown_ids(page) == []
    await note.get_by_role("button", name="Show that night").click()
    await expect(night).to_have_value(tonight.isoformat())
    await expect_rows(page, [*ids, late])
    await expect(note).to_be_hidden()
    ids.append(late)

    # On a phone the rows become cards: nothing to scroll sideways, every download button in view.
    await page.set_viewport_size({"width": 380, "height": 800})
    overflow = await page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 380 px screen"
    button = row(page, ids[0]).get_by_role("button", name="Download")
    await button.scroll_into_view_if_needed()
    box = await button.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 380


async def test_files_download_by_button_and_by_themselves_with_the_archives_checksum(
    archive: Flow, observers: Observers, instruments: InstrumentCatalog, propid: str, unique: str
) -> None:
    token = await program_with_pi(archive, propid, "alice")
    tab = await observers.open()
    page = tab.page
    await tab.sign_in(token)
    sim = simulator(archive, instruments, unique, propid)

    simulated = await write(sim, "KCWI", "raw", 2_000_000)
    assert simulated.archive_id is not None
    await expect(row(page, simulated.archive_id)).to_be_visible(timeout=60_000)
    async with page.expect_download() as asked:
        await row(page, simulated.archive_id).get_by_role("button", name="Download").click()
    download = await asked.value
    assert download.suggested_filename == simulated.path.name
    saved = await download.path()
    assert sha256(saved) == await archived_sha256(archive, simulated.archive_id) == sha256(simulated.path)

    # Raw files download by themselves as they arrive; reduced ones do not.
    arrived: list[Download] = []
    page.on("download", lambda download: arrived.append(download))  # a lambda: Playwright tags its handlers
    await page.get_by_label("Download new files").select_option("raw")
    raw = await write(sim, "KCWI", "raw", 1_500_000)
    assert raw.archive_id is not None
    await eventually(lambda: len(arrived) == 1, timeout=60, what="the raw file's automatic download")
    assert arrived[0].suggested_filename == raw.path.name
    assert sha256(await arrived[0].path()) == await archived_sha256(archive, raw.archive_id) == sha256(raw.path)
    reduced = await write(sim, "KCWI", "quicklook", 1_000_000)
    assert reduced.archive_id is not None
    await expect(row(page, reduced.archive_id)).to_be_visible(timeout=60_000)
    # The queue was empty when the reduced file arrived; had it been queued, the status would name it.
    await expect(page.get_by_test_id("download-status")).to_have_text(f"Sent {raw.path.name} to your downloads.")
    assert [d.suggested_filename for d in arrived] == [raw.path.name]


async def test_the_page_reconnects_by_itself_and_resumes_without_a_gap_or_a_duplicate(
    archive: Flow, observers: Observers, instruments: InstrumentCatalog, propid: str, unique: str
) -> None:
    token = await program_with_pi(archive, propid, "alice")
    tab = await observers.open()
    page = tab.page
    streams: list[str] = []
    page.on("websocket", lambda socket: streams.append(socket.url))
    arrived: list[Download] = []
    page.on("download", lambda download: arrived.append(download))
    await tab.sign_in(token)
    await page.get_by_label("Download new files").select_option("raw")
    sim = simulator(archive, instruments, unique, propid)
    before = await write(sim, "HIRES", "raw", 300_000)
    assert before.archive_id is not None
    await expect(row(page, before.archive_id)).to_be_visible(timeout=60_000)
    await eventually(lambda: len(arrived) == 1, timeout=30, what="the first file's automatic download")

    gateway = next(p for p in archive.processes if p.names == ("gateway",))
    assert await gateway.stop() == 0
    state = page.get_by_test_id("connection-state")
    await expect(state).to_have_attribute("data-state", "reconnecting")
    await expect(state).to_contain_text("Reconnecting in")
    during = await write(sim, "HIRES", "raw", 400_000)
    during_id = during.archive_id
    assert during_id is not None
    await eventually(lambda: has_archived(archive, during_id), timeout=60, what="the file written during the outage")

    await archive.start("gateway")
    await expect(state).to_have_attribute("data-state", "live", timeout=60_000)
    await expect_rows(page, [before.archive_id, during_id])
    assert "cursor=" in streams[-1], "the page did not resume from its cursor"
    # Missed while the page was away: new to the observer, so downloaded like a live file.
    await eventually(lambda: len(arrived) == 2, timeout=30, what="the missed file's automatic download")
    assert arrived[1].suggested_filename == during.path.name

    # A token revoked meanwhile: the next reconnection sends the observer back to the sign-in form.
    await archive.skyport("catalog", "revoke-token", "--user", "alice")
    gateway = next(p for p in reversed(archive.processes) if p.names == ("gateway",))
    assert await gateway.stop() == 0
    await archive.start("gateway")
    await expect(page.get_by_test_id("signin")).to_be_visible(timeout=60_000)
    await expect(page.get_by_test_id("signin-error")).to_contain_text("revoked")  # said by the page or by the gateway
    await expect(state).to_have_text("Signed out")
    assert await page.evaluate("() => sessionStorage.length") == 0


async def has_archived(flow: Flow, archive_id: str) -> bool:
    return any(r["archive_id"] == archive_id for r in await flow.archived())


async def test_a_pi_grants_and_removes_a_collaborator(archive: Flow, observers: Observers, propid: str) -> None:
    alice = await program_with_pi(archive, propid, "alice")
    bob = await archive.user_token("bob")
    pi_tab, bob_tab = await observers.open(), await observers.open()
    await pi_tab.sign_in(alice)
    await bob_tab.sign_in(bob)
    await expect(bob_tab.page.get_by_test_id("program-list")).to_be_empty()
    page = pi_tab.page
    members = page.get_by_test_id("member-rows")

    await page.get_by_role("button", name="Members").click()
    await page.get_by_test_id("members-program").select_option(f"KECK/{propid}")
    await expect(members.locator("tr")).to_have_count(1)
    await expect(members.locator('tr[data-username="alice"]')).to_contain_text("PI")

    # A refusal shows the catalog's own words.
    url = f"{archive.catalog_url}/v1/programs/KECK/{propid}/members/nobody"
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, json={"role": "collaborator"}, headers={"Authorization": f"Bearer {alice}"}) as refused,
    ):
        assert refused.status == 404
        reason = (await refused.json())["error"]
    await page.get_by_label("Username").fill("nobody")
    await page.get_by_role("button", name="Grant").click()
    await expect(page.get_by_test_id("members-error")).to_have_text(f"Could not add nobody: {reason}")

    await page.get_by_label("Username").fill("bob")
    await page.get_by_label("Role").select_option("collaborator")
    await page.get_by_role("button", name="Grant").click()
    await expect(page.get_by_test_id("members-message")).to_have_text(f"bob is now a collaborator of KECK/{propid}.")
    await expect(page.get_by_test_id("members-error")).to_be_hidden()
    await expect(members.locator('tr[data-username="bob"]')).to_contain_text("collaborator")
    assert await catalog_members(archive, propid, alice) == {"alice": "pi", "bob": "collaborator"}
    # Bob's open page learns of his new program from the stream, and he sees who else is in it, read-only.
    await expect(bob_tab.page.get_by_test_id("program-list")).to_have_text(f"KECK/{propid} (collaborator)")
    await bob_tab.page.get_by_role("button", name="Members").click()
    await expect(bob_tab.page.get_by_test_id("member-rows").locator("tr")).to_have_count(2)
    # Each view has its own address: a reload (or a link) comes back to it.
    await expect(bob_tab.page).to_have_url(re.compile(r"/#/members$"))
    await bob_tab.page.reload()
    await expect(bob_tab.page.get_by_test_id("member-rows").locator("tr")).to_have_count(2, timeout=15_000)
    await expect(bob_tab.page.get_by_test_id("grant-form")).to_be_hidden()
    await expect(bob_tab.page.get_by_test_id("members-readonly")).to_be_visible()
    await expect(bob_tab.page.get_by_test_id("remove-member")).to_have_count(0)

    await members.locator('tr[data-username="bob"]').get_by_role("button", name="Remove bob").click()
    await members.locator('tr[data-username="bob"]').get_by_role("button", name="Confirm").click()
    await expect(page.get_by_test_id("members-message")).to_have_text(f"bob is no longer a member of KECK/{propid}.")
    await expect(members.locator("tr")).to_have_count(1)
    assert await catalog_members(archive, propid, alice) == {"alice": "pi"}
    await expect(bob_tab.page.get_by_test_id("program-list")).to_be_empty()


async def catalog_members(flow: Flow, propid: str, token: str) -> dict[str, str]:
    """The program's members as the catalog itself has them (not through the gateway)."""
    url = f"{flow.catalog_url}/v1/programs/KECK/{propid}/members"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 200
        body = await response.json()
    return {m["username"]: m["role"] for m in body["members"]}
