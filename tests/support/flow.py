"""Running the ingest path as real processes (monitor, receiver, ingestor) against the real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from yarl import URL

from services.catalog import cli as catalog
from services.receiver.storage import SiteStore
from skyport.bus import topology
from skyport.cli import load_service
from skyport.db import Database
from skyport.runtime import migrate
from skyport.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
INSTRUMENTS = REPO / "deploy" / "instruments"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """One ``skyport run ...`` process, with the JSON log lines it wrote."""

    names: tuple[str, ...]
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    health_port: int = 0
    _reader: asyncio.Task[None] | None = None

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return code

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]


class Flow:
    """Folders, settings and processes of one test's observatory and archive.

    Each flow has a database and a RabbitMQ virtual host of its own, so that flows never see each other's
    schemas, queues or events, even when two test runs share the servers.
    """

    def __init__(self, root: Path, amqp_url: str, database_url: str, site: str) -> None:
        self.root = root
        self.server_database_url = database_url
        self.database_name = f"flow_{site}"
        self.database_url = str(URL(database_url).with_path(f"/{self.database_name}"))
        self.vhost = f"skyport-{site}"
        self.amqp_url = str(URL(amqp_url).with_path(f"/{self.vhost}"))
        self.site = site
        self.watch_root = root / "observatory"
        self.staging = root / "staging"
        self.storage = root / "archive"
        self.journal = root / "monitor" / "journal.sqlite3"
        self.receiver_port = free_port()
        self.catalog_port = free_port()
        self.gateway_port = free_port()
        self.notifier_port = free_port()
        # The SMTP server the notifier sends to (tests.support.smtp.smtp_server): set before starting the notifier.
        self.smtp_port: int | None = None
        self.token = ""
        self.settings: dict[str, str] = {}
        self.processes: list[ServiceProcess] = []

    def env(self, **settings: object) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SKYPORT_BUS_URL=self.amqp_url,
            SKYPORT_DATABASE_URL=self.database_url,
            SKYPORT_LOG_FORMAT="json",
            SKYPORT_HEALTH_HOST="127.0.0.1",
            SKYPORT_HEALTH_PORT="0",
            SKYPORT_SHUTDOWN_TIMEOUT="5",
            SKYPORT_WATCH_ROOT=str(self.watch_root),
            SKYPORT_INSTRUMENTS_DIR=str(INSTRUMENTS),
            SKYPORT_JOURNAL_PATH=str(self.journal),
            SKYPORT_STAGING_DIR=str(self.staging),
            SKYPORT_STORAGE_DIR=str(self.storage),
            SKYPORT_RECEIVER_HOST="127.0.0.1",
            SKYPORT_RECEIVER_PORT=str(self.receiver_port),
            SKYPORT_RECEIVER_URL=f"http://127.0.0.1:{self.receiver_port}",
            SKYPORT_CATALOG_HOST="127.0.0.1",
            SKYPORT_CATALOG_PORT=str(self.catalog_port),
            SKYPORT_CATALOG_PUBLIC_URL=f"http://127.0.0.1:{self.catalog_port}",
            SKYPORT_GATEWAY_HOST="127.0.0.1",
            SKYPORT_GATEWAY_PORT=str(self.gateway_port),
            SKYPORT_GATEWAY_CATALOG_URL=f"http://127.0.0.1:{self.catalog_port}",
            SKYPORT_GATEWAY_HEARTBEAT="1",
            SKYPORT_GATEWAY_RECHECK_INTERVAL="1",
            SKYPORT_GATEWAY_NOTIFIER_URL=f"http://127.0.0.1:{self.notifier_port}",
            SKYPORT_NOTIFIER_HOST="127.0.0.1",
            SKYPORT_NOTIFIER_PORT=str(self.notifier_port),
            # Links in emails go through the gateway's one address, as in production.
            SKYPORT_NOTIFIER_PUBLIC_URL=f"http://127.0.0.1:{self.gateway_port}",
            SKYPORT_NOTIFIER_CATALOG_URL=f"http://127.0.0.1:{self.catalog_port}",
            SKYPORT_NOTIFIER_SIGNING_SECRET="flow-signing-secret-" + "s" * 24,
            SKYPORT_NOTIFIER_POLL_INTERVAL="0.2",
            SKYPORT_NOTIFIER_WEBHOOK_ALLOW_HTTP="true",
            SKYPORT_SMTP_HOST="127.0.0.1",
            SKYPORT_SMTP_SECURITY="none",
            SKYPORT_SITE_TOKEN=self.token,
            SKYPORT_RESCAN_INTERVAL="2",
            SKYPORT_FOLLOW_INTERVAL="0.2",
            SKYPORT_MAX_RETRY_DELAY="1",
        )
        if self.smtp_port is not None:
            env["SKYPORT_SMTP_PORT"] = str(self.smtp_port)
        env.update(self.settings)
        env.update({f"SKYPORT_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    async def skyport(self, *args: str, **settings: object) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "skyport",
            *args,
            env=self.env(**settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise AssertionError(f"skyport {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
        return out.decode()

    async def prepare(self) -> None:
        """A new archive for this test: its own database and virtual host, migrations, a site credential."""
        conn = await asyncpg.connect(self.server_database_url)
        try:
            await conn.execute(f"CREATE DATABASE {self.database_name}")
        finally:
            await conn.close()
        await _rabbitmqctl("add_vhost", self.vhost)
        await _rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        # In this process, as the demo does, not through `skyport migrate` and `skyport receiver add-site`: each
        # command is a new interpreter (seconds of imports), and a suite makes a hundred flows. The commands
        # themselves have tests of their own (tests/integration/skyport/test_cli_errors.py, test_site_credentials).
        settings = CommonSettings(database_url=self.database_url)
        services = ("receiver", "ingestor", "catalog", "notifier")
        for name in services:
            await migrate(load_service(name), settings)
        await topology.apply_topology(self.amqp_url, set(services))  # as `skyport migrate` declares the bus too
        db = await Database.connect(self.database_url, "receiver", min_size=1, max_size=1)
        try:
            async with db.transaction() as conn:
                self.token = await SiteStore(conn).add(self.site)
        finally:
            await db.close()

    @property
    def catalog_url(self) -> str:
        return f"http://127.0.0.1:{self.catalog_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def notifier_url(self) -> str:
        return f"http://127.0.0.1:{self.notifier_port}"

    async def user_token(self, username: str, *, admin: bool = False) -> str:
        """A catalog user (created if new) and a fresh token of theirs."""
        db = await Database.connect(self.database_url, "catalog", min_size=1, max_size=1)
        try:
            await catalog.add_user(db, username, admin=admin)
            return await catalog.issue_token(db, username)
        finally:
            await db.close()

    async def start(self, *names: str, **settings: object) -> ServiceProcess:
        if "gateway" in names and "SKYPORT_GATEWAY_CATALOG_TOKEN" not in self.settings:
            # The gateway follows the catalog order with an administrator's token of its own.
            self.settings["SKYPORT_GATEWAY_CATALOG_TOKEN"] = await self.user_token("gateway", admin=True)
        if "notifier" in names and "SKYPORT_NOTIFIER_CATALOG_TOKEN" not in self.settings:
            # The notifier asks the catalog what each subscriber may see, with an administrator's token.
            self.settings["SKYPORT_NOTIFIER_CATALOG_TOKEN"] = await self.user_token("notifier", admin=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "skyport",
            "run",
            *names,
            env=self.env(**settings),
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        service = ServiceProcess(names, proc)
        self.processes.append(service)
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(proc.stderr.readline(), 60)
            if not raw:
                raise AssertionError(f"{names} exited before it was ready: {service.lines[-10:]}")
            service.lines.append(_parse(raw))
            if service.lines[-1].get("event") == "ready":
                service.health_port = int(service.lines[-1]["health_port"])
                service._reader = asyncio.get_running_loop().create_task(_read_rest(proc, service.lines))
                return service
        raise AssertionError(f"{names} not ready within 60 s")

    def log_tail(self, lines: int = 40) -> str:
        """The last log lines of every process this flow started: shown beside a failed test's report."""
        parts = []
        for process in self.processes:
            state = "running" if process.proc.returncode is None else f"exited {process.proc.returncode}"
            parts.append(f"--- {' '.join(process.names)} (pid {process.proc.pid}, {state}) ---")
            parts.extend(json.dumps(line, default=str) for line in process.lines[-lines:])
        return "\n".join(parts)

    async def close(self) -> None:
        for process in self.processes:
            if process.proc.returncode is None:
                await process.kill()
        await _rabbitmqctl("delete_vhost", self.vhost)
        conn = await asyncpg.connect(self.server_database_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {self.database_name} WITH (FORCE)")
        finally:
            await conn.close()

    async def monitor_status(self) -> dict[str, Any]:
        return dict(json.loads(await self.skyport("monitor", "status", "--json")))

    async def journal_entry(self, path: str) -> dict[str, Any]:
        """The monitor's journal row for ``path`` (read-only; SQLite lets readers in beside the monitor)."""
        import sqlite3

        with sqlite3.connect(self.journal) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        assert row is not None, f"{path} is not in the journal"
        return dict(row)

    async def transfers_in_state(self, state: str) -> int:
        conn = await asyncpg.connect(self.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM receiver.transfers WHERE state = $1", state))
        finally:
            await conn.close()

    async def archived(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch("SELECT * FROM ingestor.archived_files ORDER BY archive_id, version"))
        finally:
            await conn.close()


async def _rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        return dict(json.loads(raw))
    except ValueError:
        return {"event": "unparsed output", "text": raw.decode(errors="replace")}


async def _read_rest(proc: asyncio.subprocess.Process, lines: list[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        lines.append(_parse(raw))
