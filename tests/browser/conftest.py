"""Browser fixtures: the whole archive with its gateway, and Debian's Chromium driven by Playwright.

The browser is the system's ``/usr/bin/chromium`` (``deploy/dev/ensure-chromium`` installs it); Playwright's
own browser downloads are never used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from skyport.instruments import InstrumentCatalog, load_instruments
from tests.support.flow import INSTRUMENTS, Flow
from tests.support.servers import AMQP_URL, DATABASE_URL, ensure_postgresql, ensure_rabbitmq
from tests.support.smtp import Mailbox, smtp_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session", autouse=True)
def servers() -> None:
    ensure_rabbitmq()
    ensure_postgresql()


@pytest.fixture(scope="session")
def instruments() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS)


@pytest.fixture
async def flow(tmp_path: Path, unique: str) -> AsyncIterator[Flow]:
    flow = Flow(tmp_path, AMQP_URL, DATABASE_URL, site=f"s{unique}")
    await flow.prepare()
    yield flow
    await flow.close()


@pytest.fixture
def propid(unique: str) -> str:
    """A Keck program of this test's own (PROGNAME style)."""
    return f"2026B_P{int(unique, 16) % 1000:03d}"


@pytest.fixture
async def archive(flow: Flow) -> Flow:
    """The whole path running, from the observatory's disk to the gateway's page."""
    await flow.start("receiver", "ingestor", "catalog")
    await asyncio.gather(flow.start("gateway"), flow.start("monitor"))  # both need only the first three
    return flow


@dataclass
class NotifyingArchive:
    """The whole path with the notifier too, and the SMTP server that receives its email."""

    flow: Flow
    mailbox: Mailbox


@pytest.fixture
async def notifying_archive(flow: Flow) -> AsyncIterator[NotifyingArchive]:
    """The archive of ``archive`` and a notifier behind the gateway (subscriptions, the inbox), whose fast notices
    fold what follows within 2 s (not a minute) so that a test sees its second notice soon."""
    with smtp_server() as (mailbox, port):
        flow.smtp_port = port
        await flow.start("receiver", "ingestor", "catalog")
        await asyncio.gather(
            flow.start("gateway"), flow.start("monitor"), flow.start("notifier", notifier_coalesce_window=2)
        )
        yield NotifyingArchive(flow, mailbox)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with deploy/dev/ensure-chromium (never a downloaded browser)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield launched
        await launched.close()


@dataclass
class Observer:
    """One person's browser tab on the observer page, and the script errors it has seen."""

    context: BrowserContext
    page: Page
    errors: list[str]

    async def sign_in(self, token: str) -> None:
        await self.page.goto("/")
        await self.page.get_by_label("API token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_test_id("connection-state")).to_have_attribute(
            "data-state", "live", timeout=15_000
        )


class Observers:
    """Browser tabs on the gateway's page, each with a profile (and so a sessionStorage) of its own."""

    def __init__(self, browser: Browser, flow: Flow) -> None:
        self.browser = browser
        self.flow = flow
        self.opened: list[Observer] = []

    async def open(self, *, width: int = 1280, timezone_id: str | None = None) -> Observer:
        context = await self.browser.new_context(
            base_url=self.flow.gateway_url,
            accept_downloads=True,
            viewport={"width": width, "height": 900},
            timezone_id=timezone_id,
        )
        page = await context.new_page()
        observer = Observer(context, page, [])
        page.on("pageerror", lambda error: observer.errors.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: (
                observer.errors.append(f"console: {message.text}")
                if message.type == "error" and "Content Security Policy" in message.text
                else None
            ),
        )
        self.opened.append(observer)
        return observer

    async def close(self) -> list[str]:
        """Close every tab; the script errors and CSP refusals they saw."""
        for observer in self.opened:
            await observer.context.close()
        return [error for observer in self.opened for error in observer.errors]


@pytest.fixture
async def observers(browser: Browser, archive: Flow) -> AsyncIterator[Observers]:
    """Tabs on the page; at the end, none may have had an uncaught script error or a CSP refusal."""
    tabs = Observers(browser, archive)
    yield tabs
    errors = await tabs.close()
    assert errors == [], f"the page reported errors: {errors}"


@pytest.fixture
async def notified_observers(browser: Browser, notifying_archive: NotifyingArchive) -> AsyncIterator[Observers]:
    """Tabs on the page of an archive with a notifier, checked for script errors as ``observers`` are."""
    tabs = Observers(browser, notifying_archive.flow)
    yield tabs
    errors = await tabs.close()
    assert errors == [], f"the page reported errors: {errors}"
