"""``python -m services.demo`` (``make demo``): Skyport's whole flow in one process, with a simulated night.

Every service runs in this process: monitor, receiver, ingestor, catalog, notifier and gateway. By default on
the in-process bus and an embedded PostgreSQL kept under ``var/demo`` (nothing to install but Python); with
``SKYPORT_BUS_URL`` and ``SKYPORT_DATABASE_URL`` set, on RabbitMQ and PostgreSQL instead. The demo creates a
program with a PI and a collaborator-to-be, subscribes the PI to the program's notices (fast, by email), prints
the observer page's address and their sign-in tokens, writes a simulated night of FITS files into the monitor's
folders, and shows progress until Ctrl-C.

The notifier's email goes to the demo's own mailbox (:mod:`services.mailbox`, in this process): an SMTP server
that keeps each message as an .eml file under ``var/demo/mail`` and a page that lists and shows them, so a new
user reads the emails Skyport sends without a mail server of their own.

This module composes services; it is not one (no service imports it). It builds each service's settings and
passes them to the runtime; it never writes into ``os.environ``. Its values are defaults: a ``SKYPORT_*``
variable the caller set wins (:func:`skyport.settings.load_settings`), except the credentials the demo makes
itself at each start (the site's and the gateway's), which only it can know.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from services.catalog import cli as catalog
from services.catalog.settings import CatalogSettings
from services.gateway.settings import GatewaySettings
from services.ingestor.settings import IngestorSettings
from services.mailbox import serve as serve_mailbox
from services.monitor.settings import MonitorSettings
from services.notifier import cli as notifier
from services.notifier.levels import LevelOrder
from services.notifier.settings import NotifierSettings
from services.receiver.settings import ReceiverSettings
from services.receiver.storage import SiteStore
from skyport.cli import load_service
from skyport.db import Database
from skyport.errors import Unreachable
from skyport.instruments import load_instruments
from skyport.logging import configure_logging
from skyport.runtime import migrate, run_services
from skyport.settings import CommonSettings, SettingsError, load_settings
from skyport.simulator import Simulator
from skyport.simulator.cli import parse_size

REPO = Path(__file__).resolve().parents[1]
# Started in this order and stopped in the reverse: the monitor, the source of everything, starts once the
# receiver listens (its first files are not retried for nothing) and stops first.
SERVICES = ("receiver", "ingestor", "catalog", "notifier", "gateway", "monitor")
MISSION = "KECK"
PROPID = "2026B_D042"
# Seconds between progress lines when the output is not a terminal (on a terminal, one line is rewritten in place).
PROGRESS_EVERY = 30.0


@dataclass(frozen=True)
class Accounts:
    pi: str
    collaborator: str
    gateway: str
    notifier: str


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.demo",
        description="Skyport's whole flow in one process (make demo): monitor, receiver, ingestor, catalog, "
        "notifier and gateway on the in-process bus and an embedded PostgreSQL, a simulated night of FITS files, "
        "the observer page, and a mailbox page with the emails the notifier sent. Set SKYPORT_BUS_URL and "
        "SKYPORT_DATABASE_URL to use RabbitMQ and PostgreSQL instead. Started again, the demo continues the night "
        "where its files stop.",
        epilog="From make: make demo DEMO_ARGS='--fresh --rate 1 --size 10MB'",
    )
    parser.add_argument("--home", type=Path, default=REPO / "var" / "demo", help="where the demo keeps everything")
    parser.add_argument("--fresh", action="store_true", help="start from an empty archive (deletes --home first)")
    parser.add_argument("--rate", type=float, default=0.5, help="files written per second (default 0.5)")
    parser.add_argument("--size", default="2MB", help="size of each file (default 2MB)")
    parser.add_argument("--count", type=int, help="stop writing after this many files (default: until Ctrl-C)")
    parser.add_argument("--seed", type=int, help="the simulator's seed (default: a new one each run)")
    parser.add_argument("--port", type=int, default=8083, help="the observer page's port (default 8083)")
    parser.add_argument(
        "--mail-port", type=int, default=8085, help="the port of the page of the emails sent (default 8085)"
    )
    return parser.parse_args(argv)


def common_settings(home: Path) -> CommonSettings:
    """The process's own settings (bus, database, logging, health server): the demo's, unless the caller set them."""
    return load_settings(CommonSettings, _common_defaults(home))


def _common_defaults(home: Path) -> dict[str, Any]:
    return {
        "bus_url": "memory://",
        "database_url": f"embedded://{(home / 'postgres').resolve()}",
        "migrate_on_start": True,
        "log_format": "console",
        "log_level": "WARNING",
        "health_port": 0,
    }


@dataclass(frozen=True)
class ServiceSettings:
    """Each service's settings in the demo."""

    receiver: ReceiverSettings
    ingestor: IngestorSettings
    catalog: CatalogSettings
    notifier: NotifierSettings
    gateway: GatewaySettings
    monitor: MonitorSettings

    def by_name(self) -> dict[str, CommonSettings]:
        """As :func:`skyport.runtime.run_services` takes them."""
        return {name: getattr(self, name) for name in SERVICES}


def service_settings(
    home: Path,
    port: int,
    *,
    site_token: str,
    gateway_token: str,
    notifier_token: str,
    signing_secret: str,
    smtp_port: int,
) -> ServiceSettings:
    """Each service's settings, by name: the demo's values where the environment sets nothing, and what the demo
    made itself (the credentials of this start, the notifier's signing secret, its mailbox's SMTP port) whatever
    the environment says: the notifier's email goes to the demo's mailbox, never to a server the environment
    names for another purpose."""
    common = _common_defaults(home)
    instruments = REPO / "deploy" / "instruments"
    receiver = load_settings(
        ReceiverSettings,
        {**common, "staging_dir": home / "staging", "receiver_host": "127.0.0.1", "receiver_port": 8081},
    )
    ingestor = load_settings(
        IngestorSettings,
        {**common, "staging_dir": home / "staging", "storage_dir": home / "archive", "instruments_dir": instruments},
    )
    catalog_defaults = {
        **common,
        "storage_dir": home / "archive",
        "instruments_dir": instruments,
        "catalog_host": "127.0.0.1",
        "catalog_port": 8082,
    }
    # The public address follows the port, which the environment may have chosen: read it first.
    catalog_port = load_settings(CatalogSettings, catalog_defaults).catalog_port
    catalog = load_settings(
        CatalogSettings, {**catalog_defaults, "catalog_public_url": f"http://127.0.0.1:{catalog_port}"}
    )
    notifier_defaults = {
        **common,
        "instruments_dir": instruments,
        "notifier_host": "127.0.0.1",
        "notifier_port": 8084,
        "notifier_catalog_url": catalog.catalog_public_url,
        # A short window, so that a new user sees a second email within the minute rather than the hour.
        "notifier_coalesce_window": 20.0,
        "notifier_poll_interval": 0.5,
    }
    made = _notifier_made(notifier_token, signing_secret, smtp_port)
    # The gateway reaches it at its port, which the environment may have chosen: read it first.
    notifier_port = load_settings(
        NotifierSettings, {**notifier_defaults, "notifier_public_url": "http://127.0.0.1"}, overrides=made
    ).notifier_port
    gateway = load_settings(
        GatewaySettings,
        {
            **common,
            "gateway_host": "127.0.0.1",
            "gateway_port": port,
            "gateway_heartbeat": 5,
            "gateway_poll_interval": 2,
            "gateway_catalog_url": catalog.catalog_public_url,
            "gateway_notifier_url": f"http://127.0.0.1:{notifier_port}",
        },
        overrides={"gateway_catalog_token": SecretStr(gateway_token)},
    )
    # Links in emails go through the gateway's one address, as in production; the gateway forwards them.
    notifier = load_settings(
        NotifierSettings,
        {**notifier_defaults, "notifier_public_url": f"http://127.0.0.1:{gateway.gateway_port}"},
        overrides=made,
    )
    monitor = load_settings(
        MonitorSettings,
        {
            **common,
            "watch_root": home / "observatory",
            "journal_path": home / "monitor" / "journal.sqlite3",
            "instruments_dir": instruments,
            "receiver_url": f"http://127.0.0.1:{receiver.receiver_port}",
        },
        overrides={"site_token": SecretStr(site_token)},
    )
    return ServiceSettings(receiver, ingestor, catalog, notifier, gateway, monitor)


def _notifier_made(token: str, signing_secret: str, smtp_port: int) -> dict[str, Any]:
    """The notifier's settings that only the demo knows: its catalog token, its secret, its mailbox."""
    return {
        "notifier_catalog_token": SecretStr(token),
        "notifier_signing_secret": SecretStr(signing_secret),
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_security": "none",
        "smtp_username": None,
        "smtp_password": None,
        "mail_from": "Skyport demo <skyport@localhost>",
    }


def signing_secret(home: Path) -> str:
    """The notifier's signing secret, made at the first start and kept under ``home``: the unsubscribe links of
    the emails already in the mailbox keep working when the demo starts again."""
    path = home / "notifier" / "signing-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _make_folders(home: Path) -> None:
    for folder in ("observatory", "monitor", "staging", "archive", "mail"):
        (home / folder).mkdir(parents=True, exist_ok=True)


async def _prepare(common: CommonSettings) -> tuple[Accounts, str]:
    """Migrate every schema, then the demo's site, program, people and tokens (fresh tokens every run), and the
    PI's subscription to the program.

    Returns the people's, the gateway's and the notifier's tokens, and the site's credential.
    """

    for name in SERVICES:
        spec = load_service(name)
        if spec.migrations is not None:
            await migrate(spec, common)
    receiver = await Database.connect(common.database_url, "receiver", max_size=1)
    try:
        async with receiver.transaction() as conn:
            site_token = await SiteStore(conn).add("demo")
    finally:
        await receiver.close()
    db = await Database.connect(common.database_url, "catalog", max_size=2)
    try:
        await catalog.add_user(db, "gateway", display_name="The gateway's service account", admin=True)
        await catalog.add_user(db, "notifier", display_name="The notifier's service account", admin=True)
        await catalog.add_user(db, "alice", display_name="Alice (PI)", email="alice@example.org")
        await catalog.add_user(db, "bob", display_name="Bob (collaborator)", email="bob@example.org")
        await catalog.add_program(db, MISSION, PROPID, title="Skyport demo: a night on Maunakea", pi="alice")
        accounts = Accounts(
            pi=await catalog.issue_token(db, "alice", label="demo"),
            collaborator=await catalog.issue_token(db, "bob", label="demo"),
            gateway=await catalog.issue_token(db, "gateway", label="demo"),
            notifier=await catalog.issue_token(db, "notifier", label="demo"),
        )
    finally:
        await db.close()
    await _subscribe_the_pi(common)
    return accounts, site_token


async def _subscribe_the_pi(common: CommonSettings) -> None:
    """Alice, the PI, told of everything in her program as it happens (fast, email, every trigger): a new user
    sees emails arrive while the night runs. Once: a restarted demo finds her subscription there."""
    db = await Database.connect(common.database_url, "notifier", max_size=1)
    try:
        mine = await notifier.list_subscriptions(db, "alice")
        if any(s.active and (s.mission, s.propid) == (MISSION, PROPID) for s in mine):
            return
        levels = LevelOrder.of(load_instruments(REPO / "deploy" / "instruments"))
        await notifier.subscribe(
            db, levels, "alice", "alice@example.org", mission=MISSION, propid=PROPID, frequency="fast"
        )
    finally:
        await db.close()


async def _wait_until_up(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                if response.status < 500:
                    return True
        await asyncio.sleep(0.2)
    return False


async def _night(
    args: argparse.Namespace, accounts: Accounts, settings: ServiceSettings, mail_page: str, stop: asyncio.Event
) -> None:
    """Wait for the services, print how to sign in, write the night, and show progress."""

    monitor = settings.monitor
    page = f"http://127.0.0.1:{settings.gateway.gateway_port}/"
    catalog_url = settings.catalog.catalog_public_url
    async with aiohttp.ClientSession() as http:
        if not await _wait_until_up(http, page, stop):
            return
        print(
            f"\nSkyport demo is running.\n"
            f"  Observer page:  {page}\n"
            f"  Sign in as the PI (alice):          {accounts.pi}\n"
            f"  or as bob (the PI can add him):     {accounts.collaborator}\n"
            f"  Program {MISSION}/{PROPID}; the night's files go to {monitor.watch_root}\n"
            f"  Emails Skyport sent: {mail_page} (alice is subscribed to the program; .eml files in "
            f"{args.home / 'mail'})\n"
            f"  Ctrl-C stops.\n",
            flush=True,
        )
        sim = Simulator(
            load_instruments(monitor.instruments_dir),
            monitor.watch_root,
            programs={MISSION: [PROPID]},
            seed=args.seed if args.seed is not None else secrets.randbelow(2**31),  # a new night's files each run
        )
        written = 0
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {accounts.gateway}"}

        async def in_catalog() -> int | None:
            """The program's products in the catalog (None while the catalog does not answer)."""
            with contextlib.suppress(aiohttp.ClientError, KeyError, ValueError):
                params = {"count": "true", "limit": "1", "propid": PROPID}
                async with http.get(f"{catalog_url}/v1/products", params=params, headers=headers) as response:
                    return int((await response.json())["total"])
            return None

        async def write() -> None:
            nonlocal written
            async for _ in sim.run(
                count=args.count, rate_per_s=args.rate, sizes=[parse_size(args.size)], instruments=["HIRES", "KCWI"]
            ):
                written += 1

        before = await in_catalog() or 0  # a restarted demo's earlier files are not this run's progress
        writer = asyncio.create_task(write())
        interactive = sys.stdout.isatty()
        last_line = time.monotonic()
        reported_done = False
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set():
                    break
                total = await in_catalog()
                catalogued = "?" if total is None else str(total - before)
                done = writer.done() and catalogued == str(written)
                state = "writing" if not writer.done() else "night over"
                line = (
                    f"[{time.monotonic() - started:6.0f} s] {written} files written, {catalogued} in the catalog "
                    f"({state}); observer page {page}"
                )
                if interactive:
                    print(f"\r{line}\033[K", end="", flush=True)
                elif time.monotonic() - last_line >= PROGRESS_EVERY or (done and not reported_done):
                    # A log file, not a terminal: a line now and then, and one when the night is all catalogued.
                    print(line, flush=True)
                    last_line = time.monotonic()
                    reported_done = reported_done or done
                if writer.done() and not writer.cancelled() and (error := writer.exception()) is not None:
                    raise error
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if interactive:
                print()


async def _main(args: argparse.Namespace, common: CommonSettings) -> None:

    accounts, site_token = await _prepare(common)
    async with serve_mailbox(args.home / "mail", http_port=args.mail_port) as mailbox:
        settings = service_settings(
            args.home,
            args.port,
            site_token=site_token,
            gateway_token=accounts.gateway,
            notifier_token=accounts.notifier,
            signing_secret=signing_secret(args.home),
            smtp_port=mailbox.smtp_port,
        )
        stop = asyncio.Event()
        specs = [load_service(name) for name in SERVICES]
        services = asyncio.create_task(run_services(specs, stop=stop, settings=settings.by_name(), common=common))
        night = asyncio.create_task(_night(args, accounts, settings, mailbox.page_url, stop))
        done, _ = await asyncio.wait({services, night}, return_when=asyncio.FIRST_COMPLETED)
        if night in done and night.exception() is not None:
            stop.set()
        await services  # until Ctrl-C (or a service's failure), then a clean stop
        night.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await night
    print("Skyport demo stopped.")


def main(argv: list[str] | None = None) -> int:
    # pgserver asks platformdirs for a runtime folder it does not need; a container has no XDG_RUNTIME_DIR.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = _arguments(argv)
    if args.fresh and args.home.exists():
        shutil.rmtree(args.home)
    args.home.mkdir(parents=True, exist_ok=True)
    _make_folders(args.home)
    try:
        common = common_settings(args.home)
        configure_logging(common.log_format, common.log_level)
        asyncio.run(_main(args, common))
    except (Unreachable, SettingsError) as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nSkyport demo stopped.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
