"""``python -m services.demo`` (``make demo``): Skyport's whole flow in one process, with a simulated night.

Every service runs in this process: monitor, receiver, ingestor, catalog and gateway. By default on the
in-process bus and an embedded PostgreSQL kept under ``var/demo`` (nothing to install but Python); with
``SKYPORT_BUS_URL`` and ``SKYPORT_DATABASE_URL`` set, on RabbitMQ and PostgreSQL instead. The demo creates a
program with a PI and a collaborator-to-be, prints the observer page's address and their sign-in tokens,
writes a simulated night of FITS files into the monitor's folders, and shows progress until Ctrl-C.

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
from services.monitor.settings import MonitorSettings
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
SERVICES = ("receiver", "ingestor", "catalog", "gateway", "monitor")
MISSION = "KECK"
PROPID = "2026B_D042"
# Seconds between progress lines when the output is not a terminal (on a terminal, one line is rewritten in place).
PROGRESS_EVERY = 30.0


@dataclass(frozen=True)
class Accounts:
    pi: str
    collaborator: str
    gateway: str


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.demo",
        description="Skyport's whole flow in one process (make demo): monitor, receiver, ingestor, catalog and "
        "gateway on the in-process bus and an embedded PostgreSQL, a simulated night of FITS files, and the "
        "observer page. Set SKYPORT_BUS_URL and SKYPORT_DATABASE_URL to use RabbitMQ and PostgreSQL instead. "
        "Started again, the demo continues the night where its files stop.",
        epilog="From make: make demo DEMO_ARGS='--fresh --rate 1 --size 10MB'",
    )
    parser.add_argument("--home", type=Path, default=REPO / "var" / "demo", help="where the demo keeps everything")
    parser.add_argument("--fresh", action="store_true", help="start from an empty archive (deletes --home first)")
    parser.add_argument("--rate", type=float, default=0.5, help="files written per second (default 0.5)")
    parser.add_argument("--size", default="2MB", help="size of each file (default 2MB)")
    parser.add_argument("--count", type=int, help="stop writing after this many files (default: until Ctrl-C)")
    parser.add_argument("--seed", type=int, help="the simulator's seed (default: a new one each run)")
    parser.add_argument("--port", type=int, default=8083, help="the observer page's port (default 8083)")
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
    gateway: GatewaySettings
    monitor: MonitorSettings

    def by_name(self) -> dict[str, CommonSettings]:
        """As :func:`skyport.runtime.run_services` takes them."""
        return {name: getattr(self, name) for name in SERVICES}


def service_settings(home: Path, port: int, *, site_token: str, gateway_token: str) -> ServiceSettings:
    """Each service's settings, by name: the demo's values where the environment sets nothing, and the
    credentials made at this start (``site_token``, ``gateway_token``) whatever the environment says."""
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
    gateway = load_settings(
        GatewaySettings,
        {
            **common,
            "gateway_host": "127.0.0.1",
            "gateway_port": port,
            "gateway_heartbeat": 5,
            "gateway_poll_interval": 2,
            "gateway_catalog_url": catalog.catalog_public_url,
        },
        overrides={"gateway_catalog_token": SecretStr(gateway_token)},
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
    return ServiceSettings(receiver, ingestor, catalog, gateway, monitor)


def _make_folders(home: Path) -> None:
    for folder in ("observatory", "monitor", "staging", "archive"):
        (home / folder).mkdir(parents=True, exist_ok=True)


async def _prepare(common: CommonSettings) -> tuple[Accounts, str]:
    """Migrate every schema, then the demo's site, program, people and tokens (fresh tokens every run).

    Returns the people's and the gateway's tokens, and the site's credential.
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
        await catalog.add_user(db, "alice", display_name="Alice (PI)", email="alice@example.org")
        await catalog.add_user(db, "bob", display_name="Bob (collaborator)", email="bob@example.org")
        await catalog.add_program(db, MISSION, PROPID, title="Skyport demo: a night on Maunakea", pi="alice")
        accounts = Accounts(
            pi=await catalog.issue_token(db, "alice", label="demo"),
            collaborator=await catalog.issue_token(db, "bob", label="demo"),
            gateway=await catalog.issue_token(db, "gateway", label="demo"),
        )
    finally:
        await db.close()
    return accounts, site_token


async def _wait_until_up(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                if response.status < 500:
                    return True
        await asyncio.sleep(0.2)
    return False


async def _night(args: argparse.Namespace, accounts: Accounts, settings: ServiceSettings, stop: asyncio.Event) -> None:
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
    settings = service_settings(args.home, args.port, site_token=site_token, gateway_token=accounts.gateway)
    stop = asyncio.Event()
    specs = [load_service(name) for name in SERVICES]
    services = asyncio.create_task(run_services(specs, stop=stop, settings=settings.by_name(), common=common))
    night = asyncio.create_task(_night(args, accounts, settings, stop))
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
