"""Benchmark: from a file's close at the observatory to an observer's WebSocket, and the gateway's fan-out.

Run it by hand from the repository root (``.venv/bin/python bench/e2e.py --help``); it is not a test. Linux only
(it reads /proc). The services run against the local RabbitMQ and PostgreSQL, in a database and a virtual host of
this run's own (the harness of the end-to-end tests, ``tests/support/flow.py``, which drops both at the end), with
the services' own defaults where the harness sets quicker ones for tests. Receiver, ingestor, catalog and gateway
run in a process each, as in production (``--layout separate``, the default; ``--layout together`` puts the four
in one process), the monitor always in its own. The WebSocket
clients run in processes of their own (``bench/stream_clients.py``): the benchmark's process only closes files,
publishes events and keeps the clock of the catalog's commits, so the clients' work does not delay its readings.
Two parts, each next to its aim in the issue:

- **latency** (``--part latency``): one program with a PI, whose token opens one WebSocket stream. The night
  simulator's Keck HIRES raw files of ``--size`` (10 MB) are closed at ``--rate`` (5 files/s), ``--files`` of them
  (150) after ``--warmup`` files that are not counted. A file's latency is the arrival of its live ``file``
  message at the client minus its close at the observatory (complete under its final name; ``time.time()`` on
  both sides, one machine). Printed: p50/p95/p99/max and the files that never arrived (must be 0), then where
  the time goes: the ingest stages from the services' JSON logs, the catalog's transaction (its start,
  ``products.catalogued_at``, and its commit, see below) and the gateway's delivery. As in ``bench/ingest.py``
  the files are written ahead outside the watched tree and renamed into it at the rate (the rename is the
  close), so the simulator's data generation does not compete with the services; ``--writer live`` writes them
  while the services run. Aim: p99 under 1 s at 5 files/s of 10 MB on a 2-core machine.
- **fan-out** (``--part fanout``): ``--clients`` (1,000) WebSocket clients, each a user of their own and a member
  of one program, in ``--client-processes`` processes. Changes come two ways, without the ingest path: a steady
  stream of ``file.archived`` events published straight on the bus at ``--change-rate`` per second for
  ``--change-seconds`` (each catalogued in a transaction of its own: new products), then a burst, the PI's early
  release (``POST /v1/programs/.../release``) of ``--burst`` products catalogued before the clients connected:
  one transaction that changes them all at once, the fastest source of changes the catalog has. A delivery's
  latency is its arrival at a client minus the moment its change became visible in the catalog: the commit of
  the transaction that made it, seen by this process as the PostgreSQL notification that the catalog's outbox
  sends in that transaction (``LISTEN skyport_outbox``; PostgreSQL delivers it at commit). Each notification's
  arrival time is given to the changes read right after it (``products.seq`` past the last one seen); a change
  committed between a notification and that read gets the earlier time, so its latency is over-counted by at
  most the read's millisecond or so. Printed per phase: deliveries per second across all clients, latency
  p50/p95/p99/max, its two parts (commit to the first client's receipt, itself split at the arrival of the
  dataset event on a transient queue of this process, bound as the gateway's is: outbox relay and broker, then
  the gateway; first to last client: the fan-out itself), missing deliveries (client x change pairs never
  received, must be 0), clients closed as too slow (code 4008, must be 0) and the catalog API requests made
  meanwhile (the gateway's reads, and its token rechecks). For the burst, the figures of the issue's aim: how long
  after the commit the first client heard of it (aim: 200 ms) and the last client had all of it (aim: 2 s). The
  clients ask for protocol ``--client-protocol`` (2: a burst comes as ``files`` messages of many files; a file's
  arrival is its message's). The clients ask for no compression, as aiohttp's
  client does; ``--client-compress`` makes them ask for permessage-deflate, as browsers do. Aim: p99 under 100 ms.

CPU seconds of every process in each timed phase are printed after it (the machine is shared with whatever else
runs; that is printed too). ``--profile-gateway`` runs the gateway under cProfile and prints its top functions;
``--gateway-gc`` logs the gateway's garbage collections of 5 ms or more and prints them with each phase (a full
collection stops the gateway's event loop, and every client waits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.support`` and ``bench`` live at the repository root

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from bench.ingest import (  # noqa: E402
    BROKER_TIMEOUT,
    MB,
    PRODUCTION_DEFAULTS,
    STAGES,
    Closed,
    CpuClock,
    Prewritten,
    _filesystem,
    effective_settings,
    parse_size,
    percentile,
    problems_logged,
    progress,
    setting,
    spread,
    warnings_logged,
    write_live,
)
from services.catalog.membership import grant  # noqa: E402
from services.catalog.settings import CatalogSettings  # noqa: E402
from services.catalog.storage.users import UserStore  # noqa: E402
from services.gateway.settings import GatewaySettings  # noqa: E402
from services.monitor.settings import MonitorSettings  # noqa: E402
from skyport.bus import Bus, Subscription, create_bus  # noqa: E402
from skyport.cursor import decode_cursor  # noqa: E402
from skyport.db import Database  # noqa: E402
from skyport.db.outbox import NOTIFY_CHANNEL  # noqa: E402
from skyport.events import EVENT_MODELS, CloudEvent, DatasetEvent  # noqa: E402
from skyport.instruments import load_instruments  # noqa: E402
from skyport.logging import configure_logging  # noqa: E402
from skyport.simulator import SimulatedFile, Simulator  # noqa: E402
from tests.support.catalog import archived, event_of  # noqa: E402
from tests.support.flow import INSTRUMENTS, Flow, ServiceProcess, _parse, _read_rest  # noqa: E402
from tests.support.servers import AMQP_URL, DATABASE_URL, ensure_postgresql, ensure_rabbitmq  # noqa: E402

INSTRUMENT = "HIRES"
LATENCY_AIM = 1.0  # seconds, p99, close -> WebSocket client
FANOUT_AIM = 0.100  # seconds, p99 delivery latency with 1,000 clients
BURST_FIRST_AIM = 0.200  # seconds from a burst's commit to the first client's receipt (issue 11, item 4)
BURST_LAST_AIM = 2.0  # seconds from a burst's commit to the last client's receipt of its last change
CLIENTS_SCRIPT = Path(__file__).resolve().parent / "stream_clients.py"
PI = "alice"
# Gateway settings that tests/support/flow.py makes quick for tests (a heartbeat every second, a recheck of every
# token every second...), put back to the gateway's own defaults here, those of them this gateway has.
GATEWAY_PRODUCTION_DEFAULTS = ("gateway_heartbeat", "gateway_recheck_interval", "gateway_poll_interval")
# The settings printed with the figures: the ones that decide how much each service does at once, how soon it
# notices work, and how patient the gateway is with clients.
SHOWN_SETTINGS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "monitor": (MonitorSettings, ("incomplete_timeout", "upload_concurrency", "rescan_interval", "follow_interval")),
    "catalog": (CatalogSettings, ("catalog_batch_size", "catalog_batch_wait", "catalog_concurrency")),
    "gateway": (GatewaySettings, ("gateway_queue_limit", *GATEWAY_PRODUCTION_DEFAULTS)),
}


_REQUESTS = re.compile(r'^skyport_catalog_api_requests_total\{[^}]*route="([^"]+)"[^}]*\} ([0-9.e+]+)$')


def protocol_parameter(protocol: int) -> list[tuple[str, str]]:
    """The stream's ``protocol`` parameter; none for 1, as clients written before protocol 2 connect."""
    return [] if protocol == 1 else [("protocol", str(protocol))]


def say(line: str = "") -> None:
    print(line, flush=True)


def ms(values: Iterable[float]) -> list[float]:
    return [v * 1000 for v in values]


# --- the catalog's commits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    """A change in the catalog order and when it became visible."""

    seq: int
    archive_id: str
    propid: str
    seen_at: float  # time.time() when the notification of its transaction's commit arrived here
    started_at: float  # products.catalogued_at: now() in the catalog's transaction, i.e. the transaction's start


class CommitClock:
    """Notes when each change to the catalog order is committed, by listening to the catalog outbox's notifications.

    Every catalog transaction that changes products also writes its dataset events into the outbox, which sends
    ``pg_notify('skyport_outbox', ...)``; PostgreSQL delivers the notification when the transaction commits. On
    each one, the changes after the last position seen are read (``products.seq``, commit order) and given that
    notification's arrival time.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.commits: dict[int, Commit] = {}
        self.position = 0
        self._notes: list[float] = []
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._reader: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = await asyncpg.connect(self.database_url)
        self._reader = await asyncpg.connect(self.database_url)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)
        self.position = int(await self._reader.fetchval("SELECT coalesce(max(seq), 0) FROM catalog.products"))
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def _notified(self, *_: object) -> None:
        self._notes.append(time.time())
        self._wake.set()

    async def _follow(self) -> None:
        assert self._reader is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            seen_at = self._notes[0]
            self._notes.clear()
            rows = await self._reader.fetch(
                "SELECT seq, archive_id, propid, catalogued_at FROM catalog.products WHERE seq > $1 ORDER BY seq",
                self.position,
            )
            for row in rows:
                seq = int(row["seq"])
                started = row["catalogued_at"].timestamp()
                self.commits[seq] = Commit(seq, row["archive_id"], row["propid"], seen_at, started)
            if rows:
                self.position = int(rows[-1]["seq"])

    def of_program(self, propid: str, after: int) -> list[Commit]:
        return [c for s, c in sorted(self.commits.items()) if s > after and c.propid == propid]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in (self._listener, self._reader):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class DatasetEvents:
    """The catalog's dataset events, received here on a transient queue as the gateway receives its wake-ups.

    Splits commit -> first client into the outbox relay and the broker (commit -> event here) and the gateway
    (event -> first client): the gateway gets the same event from the same exchange at about the same moment.
    """

    def __init__(self, amqp_url: str, run_id: str) -> None:
        self.amqp_url = amqp_url
        self.queue = f"bench.{run_id}.dataset"
        self.arrivals: dict[str, list[float]] = {}  # archive ID -> time.time() of each event that listed it
        self._bus: Bus | None = None

    async def start(self) -> None:
        self._bus = create_bus(self.amqp_url, service="bench")
        await asyncio.wait_for(self._bus.start(), BROKER_TIMEOUT)
        subscription = Subscription(
            self.queue, ("dataset.#",), self._handle, models=EVENT_MODELS, prefetch=64, transient=True
        )
        await self._bus.subscribe(subscription)

    async def _handle(self, event: CloudEvent[Any]) -> None:
        now = time.time()
        if isinstance(event.data, DatasetEvent):
            for listed in event.data.files:
                self.arrivals.setdefault(listed.archive_id, []).append(now)

    def of(self, commit: Commit) -> float | None:
        """When the event announcing this change arrived: the first one listing its file after its transaction began."""
        return next((t for t in self.arrivals.get(commit.archive_id, []) if t >= commit.started_at), None)

    async def close(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bus.close(), BROKER_TIMEOUT)


# --- the WebSocket clients -------------------------------------------------------------------------------------


@dataclass
class ClientResult:
    """What one client received: ``seq -> arrival`` of its live file messages, and how it ended."""

    arrivals: dict[int, float]
    duplicates: int
    ended_early: bool
    close_code: int | None
    error: str | None


@dataclass
class Received:
    clients: list[ClientResult]
    archive_ids: dict[int, str]  # seq -> archive ID

    def first_arrival_by_archive_id(self) -> dict[str, float]:
        firsts: dict[str, float] = {}
        for client in self.clients:
            for seq, arrival in client.arrivals.items():
                archive_id = self.archive_ids[seq]
                firsts[archive_id] = min(arrival, firsts.get(archive_id, arrival))
        return firsts


class ClientProcesses:
    """WebSocket clients of the gateway in processes of their own (``bench/stream_clients.py``)."""

    def __init__(self, gateway_url: str, params: Sequence[tuple[str, str]], *, compress: bool = False) -> None:
        self.gateway_url = gateway_url
        self.params = list(params)
        self.compress = compress
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, tokens: Sequence[str], processes: int, concurrency: int = 25) -> dict[str, Any]:
        """Connect one client per token, spread over ``processes``; returns when all are live (or failed)."""
        processes = max(1, min(processes, len(tokens)))
        for index in range(processes):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CLIENTS_SCRIPT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            config = {
                "gateway": self.gateway_url,
                "tokens": list(tokens[index::processes]),
                "params": self.params,
                "concurrency": max(1, concurrency // processes),
                "compress": self.compress,
            }
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(config) + "\n").encode())
            await proc.stdin.drain()
        answers = [await self._answer(proc, timeout=300) for proc in self.procs]
        return {
            "ready": sum(a["ready"] for a in answers),
            "live": sum(a["live"] for a in answers),
            "failed": sorted({f for a in answers for f in a["failed"]}),
            "seconds": max(a["seconds"] for a in answers),
        }

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def _answer(self, proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"a client process (pid {proc.pid}) ended early with {await proc.wait()}")
        return dict(json.loads(line))

    async def _ask(self, command: str, timeout: float = 60) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{command}\n".encode())
            await proc.stdin.drain()
        return [await self._answer(proc, timeout) for proc in self.procs]

    async def count(self) -> tuple[int, int]:
        """Live file messages received by all clients so far, and connections that have ended."""
        answers = await self._ask("count")
        return sum(a["files"] for a in answers), sum(a["closed"] for a in answers)

    async def wait_for(self, total: int, timeout: float, what: str) -> int:
        """Until the clients hold ``total`` live file messages in all, or ``timeout``; the number held."""
        deadline = time.monotonic() + timeout
        shown = time.monotonic()
        while True:
            files, closed = await self.count()
            if files >= total or time.monotonic() > deadline:
                return files
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                progress(f"  {what}: {files:,}/{total:,} deliveries, {closed} connections ended")
            await asyncio.sleep(0.2)

    async def stop(self, folder: Path) -> Received:
        """Close every client and collect what each received."""
        paths = [folder / f"clients-{index}.json" for index in range(len(self.procs))]
        for proc, path in zip(self.procs, paths, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(f"stop {path}\n".encode())
            await proc.stdin.drain()
        for proc in self.procs:
            await self._answer(proc, timeout=120)
            await asyncio.wait_for(proc.wait(), 30)
        clients: list[ClientResult] = []
        archive_ids: dict[int, str] = {}
        seqs: dict[str, int] = {}
        for path in paths:
            document = json.loads(await asyncio.to_thread(path.read_text))
            path.unlink()
            for cursor, archive_id in document["archive_ids"].items():
                archive_ids[seqs.setdefault(cursor, decode_cursor(cursor))] = archive_id
            for client in document["clients"]:
                arrivals: dict[int, float] = {}
                duplicates = 0
                for cursor, arrival in client["files"]:
                    seq = seqs.setdefault(cursor, decode_cursor(cursor))
                    if seq in arrivals:
                        duplicates += 1
                    else:
                        arrivals[seq] = arrival
                clients.append(
                    ClientResult(arrivals, duplicates, client["ended_early"], client["close_code"], client["error"])
                )
        self.procs = []
        return Received(clients, archive_ids)

    async def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self.procs = []


def endings(received: Received) -> str:
    """How many clients the server closed early, by close code, and how many never connected."""
    codes: dict[str, int] = {}
    for client in received.clients:
        if client.error is not None:
            codes["never connected"] = codes.get("never connected", 0) + 1
        elif client.ended_early:
            key = f"code {client.close_code}"
            codes[key] = codes.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())) or "none"


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    flow: Flow
    root: Path
    clock: CommitClock
    events: DatasetEvents
    overrides: dict[str, object]
    processes: list[ServiceProcess] = field(default_factory=list)
    pi_token: str = ""
    run_number: int = 0

    def pids(self, clients: ClientProcesses) -> dict[str, int]:
        pids = {"+".join(p.names): p.proc.pid for p in self.processes}
        pids.update({f"clients{i}": pid for i, pid in enumerate(clients.pids)})
        pids["bench"] = os.getpid()
        return pids

    async def catalog_requests(self) -> dict[str, float]:
        """The catalog API's requests so far by route (its /metrics): what the gateway asks of the catalog."""
        catalog = next(p for p in self.processes if "catalog" in p.names)
        counts: dict[str, float] = {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{catalog.health_port}/metrics") as response,
        ):
            text = await response.text()
        for line in text.splitlines():
            found = _REQUESTS.match(line)
            if found is not None:
                counts[found.group(1)] = counts.get(found.group(1), 0.0) + float(found.group(2))
        return counts

    async def requests_since(self, before: dict[str, float]) -> str:
        after = await self.catalog_requests()
        counts = {route: after[route] - before.get(route, 0.0) for route in after}
        shown = ", ".join(f"{route} {count:.0f}" for route, count in sorted(counts.items()) if count)
        return f"catalog API requests meanwhile (the gateway's, and the release): {shown or 'none'}"

    async def add_program(self, letter: str, title: str) -> str:
        propid = f"2026B_{letter}{self.run_number:03d}"
        if not self.pi_token:
            self.pi_token = await self.flow.user_token(PI)
        await self.flow.skyport("catalog", "add-program", "KECK", propid, "--title", title, "--pi", PI)
        return propid

    # --- latency ------------------------------------------------------------------------------------------

    async def latency(self) -> None:
        args = self.args
        propid = await self.add_program("E", "End-to-end latency")
        instruments = load_instruments(INSTRUMENTS)
        tonight = datetime.now(UTC).date()
        programs = {"KECK": [propid]}
        ahead = Prewritten(
            Simulator(instruments, self.root / "written-ahead", seed=args.seed, night=tonight, programs=programs),
            self.flow.watch_root,
        )
        live = Simulator(instruments, self.flow.watch_root, seed=args.seed + 1, night=tonight, programs=programs)
        params = [("night", tonight.isoformat()), *protocol_parameter(args.client_protocol)]
        clients = ClientProcesses(self.flow.gateway_url, params)
        try:
            ready = await clients.start([self.pi_token], processes=1)
            if ready["live"] != 1:
                raise RuntimeError(f"the PI's stream did not go live: {ready}")
            progress(f"latency: the PI's stream is live; warm-up with {args.warmup} files, not counted")

            if args.warmup > 0:
                await self.close_files(ahead, live, await self.prepare_files(ahead, args.warmup, "warm-up"))
                if await clients.wait_for(args.warmup, 60, "warm-up") < args.warmup:
                    raise RuntimeError("warm-up: some files never reached the WebSocket client; see the logs")
            files = await self.prepare_files(ahead, args.files, "latency")
            progress(f"latency: {args.files} files of {args.size / MB:g} MB at {args.rate:g} files/s")
            cpu = CpuClock(self.pids(clients))
            first_lines = [len(p.lines) for p in self.processes]
            cpu.start()
            started = time.perf_counter()
            closed = await self.close_files(ahead, live, files)
            closing = time.perf_counter() - started
            await clients.wait_for(args.warmup + args.files, 60, "latency")
            cpu_lines = cpu.report()
            received = await clients.stop(self.root)
        finally:
            await clients.kill()
        arrivals = received.first_arrival_by_archive_id()
        latencies = [arrivals[c.archive_id] - c.closed_at for c in closed if c.archive_id in arrivals]
        lost = [c.archive_id for c in closed if c.archive_id not in arrivals]
        p99 = percentile(latencies, 0.99) if latencies else float("inf")
        say(f"Latency, file closed at the observatory -> its file message at a WebSocket client, {propid}:")
        say(
            f"  {len(closed)} files of {args.size / MB:g} MB closed in {closing:.1f}s "
            f"({len(closed) / closing:.2f} files/s, {args.writer} writer), one client (the PI's token)"
        )
        say(f"  {spread(latencies)}")
        duplicates = sum(c.duplicates for c in received.clients)
        say(f"  lost (never received within 60 s of the last close): {len(lost)}; received twice: {duplicates}")
        say(f"  client connections the gateway ended: {endings(received)}")
        verdict = "met" if p99 < LATENCY_AIM and not lost else "MISSED"
        say(f"  aim: p99 under {LATENCY_AIM:g}s at 5 files/s of 10 MB on 2 cores -> {verdict} (p99 {p99:.3f}s)")
        say(
            "  where the time goes (service logs; catalog transaction start and commit; the dataset event's arrival "
            "on a transient queue here, as at the gateway; client receipt):"
        )
        for line in self.stage_breakdown(closed, arrivals):
            say(line)
        for line in cpu_lines:
            say(f"  {line}")
        for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
            say(line)

    async def prepare_files(self, ahead: Prewritten, count: int, what: str) -> list[SimulatedFile] | int:
        """The files to close: written ahead now (``--writer ahead``), or only their number (``live``)."""
        if self.args.writer == "live":
            return count
        return await ahead.write(count, self.args.size, what)

    async def close_files(self, ahead: Prewritten, live: Simulator, files: list[SimulatedFile] | int) -> list[Closed]:
        """Close the files at ``--rate``: rename the ones written ahead into place, or let the simulator write them."""
        args = self.args
        if isinstance(files, int):
            return [c async for c in write_live(live, files, args.size, args.rate)]
        closed: list[Closed] = []
        async for c in ahead.close_at_rate(files, args.rate):
            closed.append(c)
            if len(closed) % max(1, round(args.rate * 10)) == 0:
                progress(f"  {len(closed)}/{len(files)} closed")
        return closed

    def stage_breakdown(self, closed: Sequence[Closed], arrivals: dict[str, float]) -> list[str]:
        by_path = {c.relative_path: c.archive_id for c in closed}
        marks: dict[str, dict[str, float]] = {c.archive_id: {"closed": c.closed_at} for c in closed}
        for process in self.processes:
            for line in process.lines:
                for service, event, key in STAGES:
                    if line.get("event") != event or service not in process.names or "timestamp" not in line:
                        continue
                    archive_id = by_path.get(line.get(key, "")) if key == "path" else line.get(key)
                    if archive_id in marks:
                        marks[archive_id].setdefault(event, datetime.fromisoformat(line["timestamp"]).timestamp())
        for commit in self.clock.commits.values():
            if commit.archive_id in marks:
                marks[commit.archive_id].setdefault("catalog transaction", commit.started_at)
                marks[commit.archive_id].setdefault("catalog commit", commit.seen_at)
                announced = self.events.of(commit)
                if announced is not None:
                    marks[commit.archive_id].setdefault("dataset event", announced)
        for archive_id, when in arrivals.items():
            if archive_id in marks:
                marks[archive_id]["client received"] = when
        order = [
            "closed",
            *(e for _, e, _ in STAGES),
            "catalog transaction",
            "catalog commit",
            "dataset event",
            "client received",
        ]
        lines = []
        for before, after in itertools.pairwise(order):
            durations = [m[after] - m[before] for m in marks.values() if before in m and after in m]
            if durations:
                lines.append(f"  {before + ' -> ' + after:<44} {spread(durations)}")
        return lines

    # --- fan-out ------------------------------------------------------------------------------------------

    async def fanout(self) -> None:
        args = self.args
        propid = await self.add_program("F", "Gateway fan-out")
        tokens = await self.members(propid, args.clients)
        observed = (datetime.now(UTC) - timedelta(days=3)).isoformat().replace("+00:00", "Z")  # not tonight
        bus = create_bus(self.flow.amqp_url, service="bench")
        await asyncio.wait_for(bus.start(), BROKER_TIMEOUT)
        tonight = datetime.now(UTC).date().isoformat()
        params = [("night", tonight), *protocol_parameter(args.client_protocol)]
        clients = ClientProcesses(self.flow.gateway_url, params, compress=args.client_compress)
        try:
            burst_ids = [f"KECK.FANOUT.B{i:06d}" for i in range(args.burst)]
            if burst_ids:
                progress(f"fan-out: cataloguing the {args.burst} products of the burst before the clients connect")
                for first in range(0, len(burst_ids), 200):
                    await asyncio.gather(
                        *(bus.publish(event_of(self.product(a, propid, observed))) for a in burst_ids[first:][:200])
                    )
                await self.wait_for_products(propid, len(burst_ids))
            progress(f"fan-out: connecting {args.clients} clients from {args.client_processes} processes")
            ready = await clients.start(tokens, args.client_processes)
            progress(f"  {ready['live']} live of {ready['ready']} connected in {ready['seconds']:.1f}s")
            if ready["failed"]:
                progress(f"  failed: {ready['failed'][:3]}")
            say(f"Fan-out, {propid}, {args.clients} WebSocket clients (one user each, all members of the program):")
            compression = "permessage-deflate asked for" if args.client_compress else "no compression asked for"
            say(
                f"  clients in {len(clients.procs)} processes of their own ({compression}; protocol "
                f"{args.client_protocol} asked for); {ready['live']} live after "
                f"{ready['seconds']:.1f}s of connecting ({len(ready['failed'])} kinds of failure)"
            )
            say(
                "  latency of a delivery: its arrival at a client minus the commit of the catalog transaction that "
                "made the change (seen here as that transaction's outbox notification, LISTEN skyport_outbox)"
            )
            first_lines = [len(p.lines) for p in self.processes]
            expected = 0
            phases: list[tuple[str, int, list[Commit], list[str]]] = []
            if args.change_seconds > 0 and args.change_rate > 0:
                count = max(1, round(args.change_rate * args.change_seconds))
                progress(f"fan-out: steady stream, {count} new products at {args.change_rate:g}/s")
                cpu = CpuClock(self.pids(clients))
                requests = await self.catalog_requests()
                cpu.start()
                before = self.clock.position
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                begin = loop.time()
                for index in range(count):
                    await asyncio.sleep(max(0.0, begin + index / args.change_rate - loop.time()))
                    await bus.publish(event_of(self.product(f"KECK.FANOUT.S{index:06d}", propid, observed)))
                publishing = time.perf_counter() - started
                expected += count * args.clients
                await clients.wait_for(expected, 60, "steady stream")
                await asyncio.sleep(0.5)  # the commit clock's last read
                commits = self.clock.of_program(propid, before)
                cpu_lines = [*cpu.report(), await self.requests_since(requests)]
                phases.append((f"steady stream: {count} changes in {publishing:.1f}s", count, commits, cpu_lines))
            if burst_ids:
                progress(f"fan-out: burst, the PI releases {len(burst_ids)} products at once")
                cpu = CpuClock(self.pids(clients))
                requests = await self.catalog_requests()
                cpu.start()
                before = self.clock.position
                async with aiohttp.ClientSession() as http:
                    url = f"{self.flow.catalog_url}/v1/programs/KECK/{propid}/release"
                    headers = {"Authorization": f"Bearer {self.pi_token}"}
                    async with http.post(url, json={"archive_ids": burst_ids}, headers=headers) as response:
                        body = await response.json()
                        if response.status != 200 or len(body["released"]) != len(burst_ids):
                            raise RuntimeError(f"the release answered {response.status}: {str(body)[:300]}")
                expected += len(burst_ids) * args.clients
                await clients.wait_for(expected, 120, "burst")
                await asyncio.sleep(0.5)
                commits = self.clock.of_program(propid, before)
                cpu_lines = [*cpu.report(), await self.requests_since(requests)]
                phases.append(
                    (f"burst: {len(burst_ids)} changes in one transaction", len(burst_ids), commits, cpu_lines)
                )
            received = await clients.stop(self.root)
        finally:
            await clients.kill()
            await bus.close()
        for name, count, commits, cpu_lines in phases:
            self.fanout_figures(name, count, commits, received)
            for line in cpu_lines:
                say(f"    {line}")
        say(f"  client connections the gateway ended early: {endings(received)}")
        for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
            say(line)

    def fanout_figures(self, name: str, expected: int, commits: Sequence[Commit], received: Received) -> None:
        """One phase's figures: ``expected`` changes to the program, ``commits`` the ones seen in the catalog."""
        args = self.args
        seqs = {c.seq: c for c in commits}
        latencies: list[float] = []
        firsts: dict[int, float] = {}
        lasts: dict[int, float] = {}
        missing = 0
        heard: list[float] = []  # each client's first receipt of a change of this phase
        for client in received.clients:
            mine = [client.arrivals[s] for s in seqs if s in client.arrivals]
            if mine:
                heard.append(min(mine))
            for seq, commit in seqs.items():
                arrival = client.arrivals.get(seq)
                if arrival is None:
                    missing += 1
                    continue
                latencies.append(arrival - commit.seen_at)
                firsts[seq] = min(arrival, firsts.get(seq, arrival))
                lasts[seq] = max(arrival, lasts.get(seq, arrival))
        too_slow = sum(c.ended_early and c.close_code == 4008 for c in received.clients)
        say(f"  {name}:")
        if len(commits) != expected:
            say(f"    WARNING: {len(commits)} changes to the program seen in the catalog, {expected} expected")
        if not latencies:
            say("    no deliveries")
            return
        begin = min(c.seen_at for c in commits)
        first, end = min(firsts.values()), max(lasts.values())
        rate = len(latencies) / (end - begin)
        p99 = percentile(latencies, 0.99)
        say(
            f"    delivered {len(latencies):,} file messages ({len(commits)} changes x {len(received.clients)} "
            f"clients) in {end - begin:.2f}s from the first commit: {rate:,.0f}/s"
            + (f" ({len(latencies) / (end - first):,.0f}/s from the first receipt to the last)" if end > first else "")
        )
        say(f"    latency, commit -> client:   {spread(ms(latencies), ' ms', 1)}")
        say(f"      commit -> first client:    {spread(ms(firsts[s] - seqs[s].seen_at for s in firsts), ' ms', 1)}")
        announced = {s: self.events.of(seqs[s]) for s in firsts}
        relayed = [a - seqs[s].seen_at for s, a in announced.items() if a is not None]
        handled = [firsts[s] - a for s, a in announced.items() if a is not None]
        say(f"        commit -> dataset event:   {spread(ms(relayed), ' ms', 1)}  (outbox relay, broker)")
        say(f"        event -> first client:     {spread(ms(handled), ' ms', 1)}  (the gateway)")
        say(f"      first -> last client:      {spread(ms(lasts[s] - firsts[s] for s in firsts), ' ms', 1)}")
        transaction = [c.seen_at - c.started_at for c in commits]
        say(f"    (catalog transaction start -> commit: {spread(ms(transaction), ' ms', 1)})")
        if self.args.gateway_gc:
            say(f"    {self.gc_pauses(begin, end)}")
        say(f"    missing deliveries: {missing}; clients closed as too slow (4008): {too_slow}")
        burst = len({c.seen_at for c in commits}) <= len(commits) / 2  # most changes committed together
        if not burst:
            verdict = "met" if p99 < FANOUT_AIM and not missing and not too_slow else "MISSED"
            say(f"    aim: p99 under {FANOUT_AIM * 1000:g} ms with {args.clients} clients -> {verdict}")
            return
        # Item 4's figures: how soon after the commit the first client hears of the burst, and how soon every
        # client has all of it (the last receipt of all). Each client's own first receipt shows the spread.
        first_heard, last_heard = min(heard) - begin, end - begin
        say(
            f"    burst: the first client heard {first_heard * 1000:.0f} ms after the commit, the last client had "
            f"every change {last_heard * 1000:.0f} ms after it"
        )
        say(f"      each client's first receipt after the commit: {spread(ms(h - begin for h in heard), ' ms', 1)}")
        verdict = (
            "met"
            if first_heard <= BURST_FIRST_AIM and last_heard <= BURST_LAST_AIM and not missing and not too_slow
            else "MISSED"
        )
        say(
            f"    aim: first within {BURST_FIRST_AIM * 1000:g} ms, last within {BURST_LAST_AIM:g} s of the commit, "
            f"with {args.clients} clients -> {verdict}"
        )
        say(
            f"    (a burst queues every change for every client at once: sending its {len(latencies):,} "
            f"messages took {end - first:.1f}s from the first receipt to the last, a floor under the latency of "
            "the last ones in any order; commit -> first client is the outbox relay, the broker, the gateway's "
            "read of the catalog and its hand-over to every client's queue)"
        )

    def gc_pauses(self, begin: float, end: float) -> str:
        """The gateway's logged garbage collections between two moments, by generation, with their lengths."""
        pauses: dict[int, list[float]] = {}
        for process in self.processes:
            if "gateway" in process.names:
                for line in process.lines:
                    if line.get("event") == "gc pause" and begin <= float(line["at"]) <= end:
                        pauses.setdefault(int(line["generation"]), []).append(float(line["ms"]))
        if not pauses:
            return f"the gateway's garbage collections of {GC_LOG_MS:g} ms or more meanwhile: none"
        shown = "; ".join(
            f"generation {g}: {len(v)} ({', '.join(f'{x:.0f}' for x in sorted(v, reverse=True)[:5])} ms)"
            for g, v in sorted(pauses.items())
        )
        return f"the gateway's garbage collections of {GC_LOG_MS:g} ms or more meanwhile: {shown}"

    @staticmethod
    def product(archive_id: str, propid: str, observed: str) -> Any:
        return archived(archive_id, propid=propid, metadata={"observed_at": observed})

    async def members(self, propid: str, count: int) -> list[str]:
        """``count`` users, each a collaborator of the program with a token; made in the catalog's database."""
        progress(f"fan-out: {count} users, members of {propid}, with a token each")
        db = await Database.connect(self.flow.database_url, "catalog", min_size=1, max_size=1)
        tokens = []
        try:
            async with db.transaction() as conn:
                users = UserStore(conn)
                for index in range(count):
                    user = await users.add(f"observer{index:05d}")
                    tokens.append(await users.issue_token(user.user_id, "bench"))
                    await grant(conn, None, "KECK", propid, user.username, "collaborator")
            # Their access.changed events go out first, so that they do not fall into the timed phases.
            async with db.pool.acquire() as conn:
                deadline = time.monotonic() + 60
                while await conn.fetchval("SELECT count(*) FROM catalog.outbox WHERE sent_at IS NULL"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the catalog's outbox did not drain within 60 s")
                    await asyncio.sleep(0.2)
        finally:
            await db.close()
        return tokens

    async def wait_for_products(self, propid: str, count: int) -> None:
        conn = await asyncpg.connect(self.flow.database_url)
        try:
            deadline = time.monotonic() + 120
            while True:
                have = await conn.fetchval("SELECT count(*) FROM catalog.products WHERE propid = $1", propid)
                unsent = await conn.fetchval("SELECT count(*) FROM catalog.outbox WHERE sent_at IS NULL")
                if have >= count and not unsent:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {have} of {count} products catalogued within 120 s")
                await asyncio.sleep(0.2)
        finally:
            await conn.close()


# --- starting the services -----------------------------------------------------------------------------------


# Run inside an instrumented service process: collections of the garbage collector longer than GC_LOG_MS are
# logged as JSON lines ({"event": "gc pause", ...}) beside the service's own log, on the same stderr.
GC_LOG_MS = 5.0
_GC_LOGGER = """
import gc, json, sys, time
_started = [0.0]
def _gc_pause(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _started[0]
    if seconds * 1000 >= {limit}:
        line = {{"event": "gc pause", "generation": info["generation"], "ms": seconds * 1000, "at": time.time()}}
        sys.stderr.write(json.dumps(line) + "\\n")
gc.callbacks.append(_gc_pause)
"""


async def start_instrumented(
    flow: Flow, names: Sequence[str], *, profile: Path | None, gc_log: bool, **settings: object
) -> ServiceProcess:
    """``skyport run <names>`` as Flow.start runs it, under cProfile (``profile``, written when the process stops on
    SIGTERM) and/or logging its garbage collector's long pauses (``gc_log``)."""
    if "gateway" in names and "SKYPORT_GATEWAY_CATALOG_TOKEN" not in flow.settings:
        flow.settings["SKYPORT_GATEWAY_CATALOG_TOKEN"] = await flow.user_token("gateway", admin=True)
    run = f"main(['run', {', '.join(repr(n) for n in names)}])"
    code = "from skyport.cli import main\n" + (_GC_LOGGER.format(limit=GC_LOG_MS) if gc_log else "")
    if profile is not None:
        code += (
            "import cProfile\nprofiler = cProfile.Profile()\nprofiler.enable()\n"
            f"try:\n    {run}\nfinally:\n    profiler.disable()\n    profiler.dump_stats({str(profile)!r})\n"
        )
    else:
        code += run + "\n"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=flow.env(**settings),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    service = ServiceProcess(tuple(names), proc)
    flow.processes.append(service)
    assert proc.stderr is not None
    while True:
        raw = await asyncio.wait_for(proc.stderr.readline(), 60)
        if not raw:
            raise RuntimeError(f"{names} exited before it was ready: {service.lines[-10:]}")
        service.lines.append(_parse(raw))
        if service.lines[-1].get("event") == "ready":
            service.health_port = int(service.lines[-1]["health_port"])
            service._reader = asyncio.get_running_loop().create_task(_read_rest(proc, service.lines))
            return service


async def run(args: argparse.Namespace) -> None:
    configure_logging("console", "WARNING")  # the catalog code run here (making members) logs every grant
    await asyncio.to_thread(ensure_rabbitmq)
    await asyncio.to_thread(ensure_postgresql)
    run_id = uuid.uuid4().hex[:8]
    args.tmp.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="skyport-bench-e2e-", dir=args.tmp))
    flow = Flow(root, args.amqp_url, args.database_url, site=f"benche2e{run_id}")
    clock = CommitClock(flow.database_url)
    # The harness's test settings look and beat much more often than a service does by default: use the defaults.
    overrides: dict[str, object] = {name: MonitorSettings.model_fields[name].default for name in PRODUCTION_DEFAULTS}
    for name in GATEWAY_PRODUCTION_DEFAULTS:
        if name in GatewaySettings.model_fields:
            overrides[name] = GatewaySettings.model_fields[name].default
    overrides.update(args.set)
    events = DatasetEvents(flow.amqp_url, run_id)
    bench = Bench(args, flow, root, clock, events, overrides, run_number=int(run_id, 16) % 1000)
    profile = root / "gateway.prof"
    try:
        progress(f"preparing a clean archive under {root}")
        await flow.prepare()
        await clock.start()
        await events.start()
        archive_side = (
            [("receiver", "ingestor", "catalog", "gateway")]
            if args.layout == "together"
            else [("receiver",), ("ingestor",), ("catalog",), ("gateway",)]
        )
        for names in [*archive_side, ("monitor",)]:
            if (args.profile_gateway or args.gateway_gc) and "gateway" in names:
                instrumented = await start_instrumented(
                    flow,
                    names,
                    profile=profile if args.profile_gateway else None,
                    gc_log=args.gateway_gc,
                    **overrides,
                )
                bench.processes.append(instrumented)
            else:
                bench.processes.append(await flow.start(*names, **overrides))
            progress(f"started {' + '.join(names)} (pid {bench.processes[-1].proc.pid})")
        say(f"Skyport end-to-end benchmark, {datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} cores")
        processes = ", ".join(" + ".join(p.names) for p in bench.processes)
        say(f"  service processes: {processes} (--layout {args.layout}); RabbitMQ and PostgreSQL on this machine")
        say(f"  work tree: {root} ({_filesystem(root)})")
        say("  settings:")
        for line in effective_settings(flow.env(**overrides), SHOWN_SETTINGS, indent="    "):
            say(line)
        if args.profile_gateway:
            say("  the gateway runs under cProfile (slower than without)")
        if args.gateway_gc:
            say(f"  the gateway logs its garbage collections of {GC_LOG_MS:g} ms or more")
        if args.part in ("latency", "all"):
            say()
            await bench.latency()
        if args.part in ("fanout", "all"):
            say()
            await bench.fanout()
    except BaseException:
        for line in problems_logged(flow.processes):
            progress(line)
        raise
    finally:
        progress("cleaning up")
        await clock.close()
        await events.close()
        for process in reversed(bench.processes):
            with contextlib.suppress(Exception):
                await process.stop(timeout=15)  # SIGTERM: a graceful stop, which also writes the profile
        if args.profile_gateway and profile.exists():
            say()
            say("Gateway profile (cProfile, the whole run), top 25 functions by own time:")
            stats = pstats.Stats(str(profile), stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
        try:
            await asyncio.wait_for(flow.close(), 4 * BROKER_TIMEOUT)
        except Exception as exc:
            progress(f"could not drop the database {flow.database_name} or the vhost {flow.vhost}: {exc!r}")
        finally:
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--part", choices=("latency", "fanout", "all"), default="all", help="what to run")
    parser.add_argument("--files", type=int, default=150, help="latency: files timed (default 150, 30 s at 5/s)")
    parser.add_argument("--rate", type=float, default=5.0, help="latency: files closed per second (default 5)")
    parser.add_argument("--size", type=parse_size, default=10 * MB, help="latency: file size (default 10MB)")
    parser.add_argument("--warmup", type=int, default=5, help="latency: files through the flow first (default 5)")
    parser.add_argument(
        "--writer",
        choices=("ahead", "live"),
        default="ahead",
        help="latency: files written ahead and renamed into place (default), or written by the simulator live",
    )
    parser.add_argument("--clients", type=int, default=1000, help="fan-out: WebSocket clients (default 1000)")
    parser.add_argument("--client-processes", type=int, default=2, help="fan-out: processes for the clients")
    parser.add_argument("--change-rate", type=float, default=5.0, help="fan-out: steady changes per second")
    parser.add_argument("--change-seconds", type=float, default=30.0, help="fan-out: seconds of steady changes")
    parser.add_argument(
        "--client-compress",
        action="store_true",
        help="fan-out: clients ask for permessage-deflate, as browsers do (default: not, as aiohttp's client)",
    )
    parser.add_argument("--burst", type=int, default=500, help="fan-out: products released at once (0: none)")
    parser.add_argument(
        "--client-protocol",
        type=int,
        default=2,
        help="the stream protocol the clients ask for (default 2: changes that come together as files messages; "
        "1: a file message each, as clients written before protocol 2)",
    )
    parser.add_argument(
        "--layout",
        choices=("separate", "together"),
        default="separate",
        help="receiver, ingestor, catalog and gateway in a process each (default) or in one; the monitor runs alone",
    )
    parser.add_argument("--profile-gateway", action="store_true", help="run the gateway under cProfile")
    parser.add_argument(
        "--gateway-gc", action="store_true", help="log the gateway's long garbage collections; printed per phase"
    )
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for every process, e.g. --set gateway_queue_limit=2000 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=20261121, help="the simulator's seed")
    parser.add_argument("--amqp-url", default=AMQP_URL, help=f"RabbitMQ (default {AMQP_URL})")
    parser.add_argument("--database-url", default=DATABASE_URL, help=f"PostgreSQL server (default {DATABASE_URL})")
    parser.add_argument(
        "--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the work tree goes (default: temp dir)"
    )
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
