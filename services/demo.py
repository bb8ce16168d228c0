"""``python -m services.demo`` (``make demo``): Skyport's whole flow in one process, with a simulated night.

Every service runs in this process: monitor, receiver, ingestor, catalog and gateway. By default on the
in-process bus and an embedded PostgreSQL kept under ``var/demo`` (nothing to install but Python); with
``SKYPORT_BUS_URL`` and ``SKYPORT_DATABASE_URL`` set, on RabbitMQ and PostgreSQL instead. The demo creates a
program with a PI and a collaborator-to-be, prints the observer page's address and their sign-in tokens,
writes a simulated night of FITS files into the monitor's folders, and shows progress until Ctrl-C.

This module composes services; it is not one (no service imports it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.catalog import cli as catalog
from services.receiver.storage import SiteStore
from skyport.cli import load_service
from skyport.db import Database
from skyport.errors import Unreachable
from skyport.instruments import load_instruments
from skyport.logging import configure_logging
from skyport.runtime import migrate, run_services
from skyport.settings import CommonSettings
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


def _configure(home: Path, port: int) -> None:
    """The environment every service reads its settings from; what the caller set wins."""
    defaults = {
        "SKYPORT_BUS_URL": "memory://",
        "SKYPORT_DATABASE_URL": f"embedded://{(home / 'postgres').resolve()}",
        "SKYPORT_MIGRATE_ON_START": "true",
        "SKYPORT_LOG_FORMAT": "console",
        "SKYPORT_LOG_LEVEL": "WARNING",
        "SKYPORT_HEALTH_PORT": "0",
        "SKYPORT_WATCH_ROOT": str(home / "observatory"),
        "SKYPORT_JOURNAL_PATH": str(home / "monitor" / "journal.sqlite3"),
        "SKYPORT_INSTRUMENTS_DIR": str(REPO / "deploy" / "instruments"),
        "SKYPORT_STAGING_DIR": str(home / "staging"),
        "SKYPORT_STORAGE_DIR": str(home / "archive"),
        "SKYPORT_RECEIVER_HOST": "127.0.0.1",
        "SKYPORT_RECEIVER_PORT": "8081",
        "SKYPORT_CATALOG_HOST": "127.0.0.1",
        "SKYPORT_CATALOG_PORT": "8082",
        "SKYPORT_GATEWAY_HOST": "127.0.0.1",
        "SKYPORT_GATEWAY_PORT": str(port),
        "SKYPORT_GATEWAY_HEARTBEAT": "5",
        "SKYPORT_GATEWAY_POLL_INTERVAL": "2",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("SKYPORT_RECEIVER_URL", f"http://127.0.0.1:{os.environ['SKYPORT_RECEIVER_PORT']}")
    os.environ.setdefault("SKYPORT_CATALOG_PUBLIC_URL", f"http://127.0.0.1:{os.environ['SKYPORT_CATALOG_PORT']}")
    os.environ.setdefault("SKYPORT_GATEWAY_CATALOG_URL", os.environ["SKYPORT_CATALOG_PUBLIC_URL"])
    for folder in ("observatory", "monitor", "staging", "archive"):
        (home / folder).mkdir(parents=True, exist_ok=True)


async def _prepare() -> Accounts:
    """Migrate every schema, then the demo's site, program, people and tokens (fresh tokens every run)."""

    settings = CommonSettings()
    for name in SERVICES:
        spec = load_service(name)
        if spec.migrations is not None:
            await migrate(spec, settings)
    receiver = await Database.connect(settings.database_url, "receiver", max_size=1)
    try:
        async with receiver.transaction() as conn:
            os.environ["SKYPORT_SITE_TOKEN"] = await SiteStore(conn).add("demo")
    finally:
        await receiver.close()
    db = await Database.connect(settings.database_url, "catalog", max_size=2)
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
    os.environ["SKYPORT_GATEWAY_CATALOG_TOKEN"] = accounts.gateway
    return accounts


async def _wait_until_up(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> bool:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                if response.status < 500:
                    return True
        await asyncio.sleep(0.2)
    return False


async def _night(args: argparse.Namespace, accounts: Accounts, stop: asyncio.Event) -> None:
    """Wait for the services, print how to sign in, write the night, and show progress."""

    page = f"http://127.0.0.1:{args.port}/"
    catalog_url = os.environ["SKYPORT_CATALOG_PUBLIC_URL"]
    async with aiohttp.ClientSession() as http:
        if not await _wait_until_up(http, page, stop):
            return
        print(
            f"\nSkyport demo is running.\n"
            f"  Observer page:  {page}\n"
            f"  Sign in as the PI (alice):          {accounts.pi}\n"
            f"  or as bob (the PI can add him):     {accounts.collaborator}\n"
            f"  Program {MISSION}/{PROPID}; the night's files go to {os.environ['SKYPORT_WATCH_ROOT']}\n"
            f"  Ctrl-C stops.\n",
            flush=True,
        )
        sim = Simulator(
            load_instruments(Path(os.environ["SKYPORT_INSTRUMENTS_DIR"])),
            Path(os.environ["SKYPORT_WATCH_ROOT"]),
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


async def _main(args: argparse.Namespace) -> None:

    accounts = await _prepare()
    stop = asyncio.Event()
    services = asyncio.create_task(run_services([load_service(name) for name in SERVICES], stop=stop))
    night = asyncio.create_task(_night(args, accounts, stop))
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
    _configure(args.home, args.port)

    common = CommonSettings()
    configure_logging(common.log_format, common.log_level)
    try:
        asyncio.run(_main(args))
    except Unreachable as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nSkyport demo stopped.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
