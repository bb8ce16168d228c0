"""Benchmark: latency and throughput of the ingest path (monitor, receiver, ingestor) to the file.archived event.

Run it by hand from the repository root (``.venv/bin/python bench/ingest.py --help``) or with ``make bench``; it
is not a test. Linux only (it reads /proc and runs GNU ``dd``). It starts the services as separate processes, as
production runs them, against the local RabbitMQ and PostgreSQL (with the harness of the end-to-end tests,
``tests/support/flow.py``), lets the night simulator write Keck HIRES raw files into the watched folder, and takes
the time each file's ``file.archived`` event reaches a queue of the benchmark's own. Four phases (``--only``), each
next to its aim (issues 3 and 11):

- **small files**: ``--small-count`` files of 1 MB closed at once, the monitor uploading one at a time and then eight
  at a time (``--small-concurrency``), in files/s from the first close to the last ``file.archived``, with the CPU
  milliseconds per file of every process (from /proc: the services, PostgreSQL, RabbitMQ). Aims: 100 and 150
  files/s, under 12 ms of CPU per file in all.
- **single file**: one ``--single-size`` file (200 MB) from close to ``file.archived``, next to ``dd conv=fdatasync``
  of the same size before and after. Aim: at least 0.9 of dd. With ``--single-size 2GB`` the peak resident sets
  printed are the memory figure of issue 11 (aim: under 200 MB each).

Beside each, the **floor**: a minimal receiver written here (``serve_minimal``, a process of its own: an aiohttp
endpoint that streams the body to disk, fsyncs it and inserts one row into PostgreSQL), to which the benchmark
uploads the same files as a site would (keep-alive, as many at a time); the ratio to it carries across machines.
And the two figures of issue 3:

- **latency** from a file's close at the observatory (complete under its final name) to the receipt of its
  ``file.archived`` event, p50/p95/p99/max, at a steady rate of 10 MB files (``--rate`` files/s for
  ``--duration`` seconds, after ``--warmup`` files that are not counted). Aim: p99 under 1 s at 5 files/s on a
  2-core machine.
- **throughput** of the whole path for a batch of 200 MB files closed at once: their bytes over the time from
  the first close to the last ``file.archived``, next to the durable write rate of the disk measured in the same
  run on the same file system (``dd conv=fdatasync``, one file per file of the batch, the same sizes, before and
  after the batch), and the ratio. Aim: at least 0.8.

The files are written by the simulator before they are timed, under a folder outside the watched tree, made
durable (``sync``), and then renamed into the watched folder at the chosen rate: the rename is the file's close.
So the simulator's own write (about 100 MB/s of CPU-bound data generation here) competes neither with the
pipeline nor with ``dd``, and the throughput figure counts what the pipeline does after the instrument is done:
read and verify the FITS file and hash it (monitor), stream it over HTTP, hash it and write it to staging with an
fsync (receiver), hash it again, check its header and rename it into storage (ingestor), and the database commits
and publishes with confirms on the way. The disk figure is writing the same bytes once. ``--writer live`` instead
lets the simulator write each latency file while the services run (``Simulator.run``), its CPU on the same cores.

The receiver and the ingestor run in processes of their own by default (``--layout separate``), the monitor
always alone. On the 2-core machine this was written on, that layout moved the 200 MB batch 15-20 % faster than
the receiver and ingestor in one process (``--layout together``: one interpreter lock for both, and more CPU
spent in all) and gave the same latency.

To find where the time goes, the services' JSON logs are read back: each stage's share of the latency (close to
"file detected", to "file evaluated", to "transfer created" at the receiver, to "file staged", to "file archived",
to the event's receipt) and the CPU seconds of every process during each phase are printed too.

Each run has a PostgreSQL database and a RabbitMQ virtual host of its own (made and dropped by the test harness,
with ``rabbitmqctl``), so it can run beside the tests; the machine's other load cannot be kept out, so it is
measured and printed. Everything goes under a temporary folder in ``--tmp`` (on the file system of the archive
under test: staging and storage share it, so archiving is a rename), removed at the end. A RabbitMQ whose file
handle budget is used up (``rabbitmq-diagnostics status``, "File Descriptors": about 927 with the usual soft limit
of 1024 open files, and every quorum queue of every virtual host takes some) accepts TCP connections but never
answers them: the benchmark then stops after ``BROKER_TIMEOUT`` seconds with the services' last log lines instead
of waiting for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.support`` lives at the repository root, not in the installed packages

import aio_pika  # noqa: E402
from aio_pika.abc import AbstractConnection  # noqa: E402

from services.ingestor.settings import IngestorSettings  # noqa: E402
from services.monitor.settings import MonitorSettings  # noqa: E402
from services.receiver.settings import ReceiverSettings  # noqa: E402
from skyport.bus import Bus, Subscription, create_bus  # noqa: E402
from skyport.events import CloudEvent, FileArchived  # noqa: E402
from skyport.instruments import load_instruments  # noqa: E402
from skyport.simulator import SimulatedFile, Simulator  # noqa: E402
from tests.support.flow import INSTRUMENTS, Flow, ServiceProcess, free_port  # noqa: E402
from tests.support.servers import AMQP_URL, DATABASE_URL, ensure_postgresql, ensure_rabbitmq  # noqa: E402

INSTRUMENT = "HIRES"  # Keck HIRES raw: one file per exposure, the simplest product
LATENCY_AIM = 1.0  # seconds, p99
THROUGHPUT_AIM = 0.8  # of the disk's durable write rate
SINGLE_AIM = 0.9  # one big file, of the disk's durable write rate (issue 11)
SMALL_AIMS = {1: 100.0, 8: 150.0}  # files/s of 1 MB files, by files at a time (issue 11)
CPU_AIM_MS = 12.0  # CPU per 1 MB file, every process together (issue 11)
MB = 1_000_000
BROKER_TIMEOUT = 30.0  # seconds for RabbitMQ to open a connection, or a clean-up step to end
# The settings printed with the figures: the ones that decide how much each service does at once and how fast
# it notices work.
SHOWN_SETTINGS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "monitor": (
        MonitorSettings,
        (
            "dep_concurrency",
            "upload_concurrency",
            "incomplete_timeout",
            "rescan_interval",
            "follow_interval",
            "max_retry_delay",
        ),
    ),
    "receiver": (ReceiverSettings, ("max_concurrent_uploads",)),
    "ingestor": (IngestorSettings, ("ingest_concurrency",)),
}
# Settings that tests/support/flow.py sets for quick tests, put back to the services' defaults here.
PRODUCTION_DEFAULTS = ("rescan_interval", "follow_interval", "max_retry_delay")
# Log events that mark a file's way, in order: (service, event, what identifies the file in the line).
STAGES = (
    ("monitor", "file detected", "path"),
    ("monitor", "file evaluated", "archive_id"),
    ("receiver", "transfer created", "archive_id"),
    ("receiver", "file staged", "archive_id"),
    ("ingestor", "file archived", "archive_id"),
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- figures ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    if not values:
        return "no samples"
    figures = [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)]
    parts = [f"{name} {percentile(values, q):.{digits}f}{unit}" for name, q in figures]
    return "  ".join([*parts, f"max {max(values):.{digits}f}{unit}", f"(n={len(values)})"])


# --- the file.archived events -------------------------------------------------------------------------------


class ArchivedEvents:
    """Receives ``file.archived`` on a queue of the benchmark's own and notes when each archive ID arrived."""

    def __init__(self, amqp_url: str, run_id: str) -> None:
        self.amqp_url = amqp_url
        self.queue = f"bench.{run_id}.archived"
        self.received: dict[str, float] = {}  # archive ID -> time.time() of the first receipt
        self.duplicates = 0
        self._arrived = asyncio.Event()
        self._bus: Bus | None = None
        self._admin: AbstractConnection | None = None

    async def start(self) -> None:
        try:
            # A connection of its own to delete the queue at the end, opened now: a broker short of file handles
            # (see the module's docstring) may not answer new connections by then.
            self._admin = await aio_pika.connect(self.amqp_url, timeout=BROKER_TIMEOUT)
            self._bus = create_bus(self.amqp_url, service="bench")
            await asyncio.wait_for(self._bus.start(), BROKER_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"RabbitMQ did not open a connection within {BROKER_TIMEOUT:g}s") from None
        await self._bus.subscribe(
            Subscription(self.queue, ("file.archived",), self._handle, models={"file.archived": FileArchived})
        )

    async def _handle(self, event: CloudEvent[FileArchived]) -> None:
        now = time.time()
        if event.data.archive_id in self.received:
            self.duplicates += 1
            return
        self.received[event.data.archive_id] = now
        self._arrived.set()

    async def wait_for(self, archive_ids: Iterable[str], timeout: float) -> set[str]:
        """Wait until every archive ID has arrived or ``timeout`` passes; returns the ones still missing."""
        wanted = set(archive_ids)
        deadline = time.monotonic() + timeout
        shown = time.monotonic()
        while missing := wanted - self.received.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return missing
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 5.0))
            if time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                progress(f"  {len(wanted & self.received.keys())}/{len(wanted)} files archived")
        return set()

    async def close(self) -> None:
        if self._bus is not None:
            await asyncio.wait_for(self._bus.close(), BROKER_TIMEOUT)
        if self._admin is not None:
            async with self._admin:
                channel = await self._admin.channel()
                for name in (self.queue, f"{self.queue}.retry"):
                    await asyncio.wait_for(channel.queue_delete(name), BROKER_TIMEOUT)


# --- writing files ------------------------------------------------------------------------------------------


@dataclass
class Closed:
    """A file closed at the observatory during a timed phase."""

    archive_id: str
    relative_path: str
    size_bytes: int
    closed_at: float  # time.time()


class Prewritten:
    """Files written ahead by the simulator outside the watched tree, then renamed into it: the rename closes them."""

    def __init__(self, simulator: Simulator, watch_root: Path) -> None:
        self.simulator = simulator
        self.watch_root = watch_root

    async def write(self, count: int, size: int, what: str) -> list[SimulatedFile]:
        files: list[SimulatedFile] = []
        started = time.perf_counter()
        for index in range(count):
            files.append(await asyncio.to_thread(self.simulator.write_file, INSTRUMENT, size_bytes=size, mode="rename"))
            if (index + 1) % 25 == 0:
                progress(f"  {index + 1}/{count} {what} files written ahead")
        for simulated in files:
            await asyncio.to_thread(
                (self.watch_root / simulated.relative_path).parent.mkdir, parents=True, exist_ok=True
            )
        await asyncio.to_thread(os.sync)  # their write-back must not compete with what is timed
        seconds = time.perf_counter() - started
        progress(f"  {count} {what} files of {size / MB:g} MB written ahead in {seconds:.1f}s")
        return files

    def close(self, simulated: SimulatedFile) -> Closed:
        os.rename(simulated.path, self.watch_root / simulated.relative_path)
        assert simulated.archive_id is not None
        return Closed(simulated.archive_id, simulated.relative_path, simulated.size_bytes, time.time())

    async def close_at_rate(self, files: Sequence[SimulatedFile], rate: float) -> AsyncIterator[Closed]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, simulated in enumerate(files):
            await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
            yield self.close(simulated)


async def write_live(simulator: Simulator, count: int, size: int, rate: float) -> AsyncIterator[Closed]:
    """The simulator writes each file into the watched tree while the services run (hidden name, then renamed)."""
    runs = simulator.run(count=count, rate_per_s=rate, sizes=(size,), instruments=(INSTRUMENT,), mode="rename")
    async with contextlib.aclosing(cast(AsyncGenerator[SimulatedFile, None], runs)) as written:
        async for simulated in written:
            assert simulated.archive_id is not None
            yield Closed(
                simulated.archive_id, simulated.relative_path, simulated.size_bytes, simulated.closed_at.timestamp()
            )


# --- the disk -----------------------------------------------------------------------------------------------

_DD_SUMMARY = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.MULTILINE)


def disk_write_rate(folder: Path, sizes: Sequence[int]) -> float:
    """MB/s of ``dd if=/dev/zero ... conv=fdatasync`` writing one file per size in ``folder``, one after another.

    The files are kept until the last one is written, as the pipeline keeps its files: in a virtual machine whose
    freed memory goes back to the host, a writer that deletes each file before the next one recycles the same
    page-cache pages and looks faster than one that needs fresh memory for every file.
    """
    total_bytes = 0
    total_seconds = 0.0
    where = folder / "dd"
    where.mkdir()
    try:
        for index, size in enumerate(sizes):
            command = ["dd", "if=/dev/zero", f"of={where / str(index)}", "bs=4M", f"count={size}", "iflag=count_bytes"]
            result = subprocess.run([*command, "conv=fdatasync"], capture_output=True, text=True, check=True)
            found = _DD_SUMMARY.search(result.stderr)
            if found is None:
                raise RuntimeError(f"cannot read dd's summary: {result.stderr!r}")
            total_bytes += int(found.group(1))
            total_seconds += float(found.group(2))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return total_bytes / MB / total_seconds


# --- the floor: a minimal receiver ---------------------------------------------------------------------------

MINIMAL_TABLE = "bench_minimal_files"


async def serve_minimal(port: int, folder: Path, database_url: str) -> None:
    """The floor any archive pays, run as a process of its own (``--minimal-receiver``): an aiohttp endpoint that
    streams the body to disk, fsyncs it and inserts one row into PostgreSQL. No hashing, no events, no checks."""
    import signal

    import asyncpg
    from aiohttp import web

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    await pool.execute(
        f"CREATE TABLE IF NOT EXISTS {MINIMAL_TABLE} (name text PRIMARY KEY, size_bytes bigint NOT NULL, "
        "received_at timestamptz NOT NULL DEFAULT now())"
    )

    async def put(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise web.HTTPBadRequest()
        size = 0
        with (folder / name).open("wb") as handle:
            async for chunk in request.content.iter_chunked(1 << 20):
                handle.write(chunk)
                size += len(chunk)
            await asyncio.to_thread(os.fsync, handle.fileno())
        await pool.execute(
            f"INSERT INTO {MINIMAL_TABLE} (name, size_bytes) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET size_bytes = EXCLUDED.size_bytes, received_at = now()",
            name,
            size,
        )
        return web.json_response({"name": name, "size_bytes": size}, status=201)

    app = web.Application()
    app.router.add_put("/{name}", put)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()
    await pool.close()


class MinimalReceiver:
    """The minimal receiver's process, and a client that uploads files to it as a site would (keep-alive)."""

    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.database_url = database_url
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self._uploaded = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "bench" / "ingest.py"),
            "--minimal-receiver",
            f"{self.port}:{self.folder}",
            "--database-url",
            self.database_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), BROKER_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError("the minimal receiver did not start")

    async def upload(self, paths: Sequence[Path], concurrency: int) -> float:
        """Upload every file, ``concurrency`` at a time, each waiting for its answer; returns the seconds taken."""
        import aiohttp

        queue = iter(paths)
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                for path in queue:
                    self._uploaded += 1
                    size = path.stat().st_size
                    with path.open("rb") as content:
                        async with session.put(
                            f"http://127.0.0.1:{self.port}/f{self._uploaded}",
                            data=content,
                            headers={"Content-Length": str(size)},
                        ) as response:
                            response.raise_for_status()
                            await response.read()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 15)
        await asyncio.to_thread(shutil.rmtree, self.folder, ignore_errors=True)


def peak_resident(pids: dict[str, int]) -> str:
    """Each process's peak resident set since it started (VmHWM, from /proc), in MB."""
    parts = []
    for name, pid in pids.items():
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    parts.append(f"{name} {int(line.split()[1]) / 1000:.0f} MB")
    return "peak resident set: " + ", ".join(parts)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (5 min {five:.2f})"


def cpu_per_file(used: dict[str, float], files: int) -> str:
    total = sum(used.values())
    parts = ", ".join(f"{name} {seconds / files * 1000:.1f}" for name, seconds in used.items() if seconds > 0)
    return f"CPU ms per file: {total / files * 1000:.1f} in all ({parts})"


# --- the processes ------------------------------------------------------------------------------------------


class CpuClock:
    """CPU seconds between two readings (from /proc): of the services, of the servers, and of the whole machine.

    Each service's figure is followed by its kernel (system) share: page cache, file system, loopback TCP, and in a
    virtual machine the first touch of memory that the host had taken back. The machine's figure is split into
    user, system, interrupts and steal (time the hypervisor gave to others); waiting for the disk counts as idle.
    A service's child processes count as the service (the monitor's DEP workers). Whatever else ran meanwhile is
    named, since on a shared machine it is taken from the figures.
    """

    SERVERS = {"beam.smp": "rabbitmq", "erl_child_setup": "rabbitmq", "epmd": "rabbitmq", "postgres": "postgresql"}

    def __init__(self, pids: dict[str, int]) -> None:
        self.names = {pid: name for name, pid in pids.items()}
        self.tick = os.sysconf("SC_CLK_TCK")
        self._processes: dict[int, tuple[str, int, float, float]] = {}
        self._machine: dict[str, float] = {}
        self._wall = 0.0
        self.used: dict[str, float] = {}  # CPU seconds per process (or server) at the last report()

    def _read(self) -> tuple[dict[int, tuple[str, int, float, float]], dict[str, float]]:
        """(command, parent, user seconds, system seconds) of every process, and the machine's CPU seconds."""
        processes: dict[int, tuple[str, int, float, float]] = {}
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{entry}/stat").read_text()
                fields = text[text.rindex(")") + 1 :].split()
                command = text[text.index("(") + 1 : text.rindex(")")]
                processes[int(entry)] = (
                    command,
                    int(fields[1]),
                    int(fields[11]) / self.tick,
                    int(fields[12]) / self.tick,
                )
        machine: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            cpu = [int(v) / self.tick for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = cpu
            machine = {"user": user + nice, "system": system, "interrupts": irq + softirq, "steal": steal}
        return processes, machine

    def start(self) -> None:
        self._processes, self._machine = self._read()
        self._wall = time.perf_counter()

    def report(self) -> list[str]:
        wall = time.perf_counter() - self._wall
        processes, machine = self._read()
        ours: dict[str, list[float]] = {name: [0.0, 0.0] for name in self.names.values()}  # [total, system]
        others: dict[str, float] = {}
        for pid, (command, parent, user, system) in processes.items():
            _, _, user_before, system_before = self._processes.get(pid, (command, parent, 0.0, 0.0))
            used = user - user_before + system - system_before
            group = self.names.get(pid) or self.names.get(parent) or self.SERVERS.get(command)
            if group is not None:
                figures = ours.setdefault(group, [0.0, 0.0])
                figures[0] += used
                figures[1] += system - system_before
            elif used > 0:
                others[command] = others.get(command, 0.0) + used
        self.used = {name: figures[0] for name, figures in ours.items()}
        busy = sum(machine.get(k, 0.0) - self._machine.get(k, 0.0) for k in ("user", "system", "interrupts"))
        unseen = max(0.0, busy - sum(f[0] for f in ours.values()) - sum(others.values()))  # ended processes
        top = sorted(others.items(), key=lambda item: -item[1])[:3]
        cores = os.cpu_count() or 1
        shares = ", ".join(f"{k} {(v - self._machine.get(k, 0.0)) / wall / cores:.0%}" for k, v in machine.items())
        return [
            f"CPU seconds in {wall:.1f}s: "
            + ", ".join(f"{name} {total:.1f} (system {system:.1f})" for name, (total, system) in ours.items()),
            f"  the rest: {sum(others.values()) + unseen:.1f} ("
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in top)
            + f", processes that ended {unseen:.1f})",
            f"machine ({cores} cores): {shares}",
        ]


def effective_settings(
    env: dict[str, str],
    shown: dict[str, tuple[type[Any], tuple[str, ...]]] = SHOWN_SETTINGS,
    indent: str = "  ",
) -> list[str]:
    """A line per service: the values (from ``env``, else the default) of the settings ``shown`` names."""
    lines = []
    for service, (settings_class, names) in shown.items():
        values = []
        for name in names:
            if name not in settings_class.model_fields:
                continue
            value = env.get(f"SKYPORT_{name.upper()}", settings_class.model_fields[name].default)
            values.append(f"{name}={value}")
        lines.append(f"{indent}{service}: {', '.join(values)}")
    return lines


def stage_breakdown(
    processes: Sequence[ServiceProcess], closed: Sequence[Closed], received: dict[str, float]
) -> list[str]:
    """Per stage of the files' way (from the services' JSON logs), the spread of its duration."""
    by_path = {c.relative_path: c.archive_id for c in closed}
    marks: dict[str, dict[str, float]] = {c.archive_id: {"closed": c.closed_at} for c in closed}
    for process in processes:
        for line in process.lines:
            for service, event, key in STAGES:
                if line.get("event") != event or service not in process.names or "timestamp" not in line:
                    continue
                archive_id = by_path.get(line.get(key, "")) if key == "path" else line.get(key)
                if archive_id in marks:
                    marks[archive_id].setdefault(event, datetime.fromisoformat(line["timestamp"]).timestamp())
    for archive_id, when in received.items():
        if archive_id in marks:
            marks[archive_id]["event received"] = when
    order = ["closed", *(event for _, event, _ in STAGES), "event received"]
    lines = []
    for before, after in itertools.pairwise(order):
        durations = [m[after] - m[before] for m in marks.values() if before in m and after in m]
        if durations:
            lines.append(f"  {before + ' -> ' + after:<38} {spread(durations)}")
    return lines


def warnings_logged(processes: Sequence[ServiceProcess], since: Sequence[int]) -> list[str]:
    """How many warnings and errors of each kind every service logged after line ``since[i]`` of its log."""
    counts: dict[str, int] = {}
    for process, first in zip(processes, since, strict=True):
        for line in process.lines[first:]:
            if line.get("level") in ("warning", "error", "critical"):
                key = f"{'+'.join(process.names)}: {line.get('event')}"
                counts[key] = counts.get(key, 0) + 1
    return [f"  {count} x {key}" for key, count in sorted(counts.items())]


def problems_logged(processes: Sequence[ServiceProcess], last: int = 10) -> list[str]:
    """What each service logged last, for when a phase fails: its warnings and errors, or else its last lines."""
    lines: list[str] = []
    for process in processes:
        name = "+".join(process.names)
        problems = [line for line in process.lines if line.get("level") in ("warning", "error", "critical")]
        lines.extend(f"{name}: {line}" for line in (problems or process.lines)[-last:])
        if not process.lines:
            lines.append(f"{name}: no output yet (is RabbitMQ or PostgreSQL slow to answer?)")
        if process.proc.returncode is not None:
            lines.append(f"{name} exited with {process.proc.returncode}")
    return lines


# --- the run -----------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    flow: Flow
    events: ArchivedEvents
    ahead: Prewritten
    live: Simulator
    minimal: MinimalReceiver
    overrides: dict[str, object] = field(default_factory=dict)
    processes: list[ServiceProcess] = field(default_factory=list)
    monitor: ServiceProcess | None = None
    monitor_settings: dict[str, object] | None = None

    async def use_monitor(self, **settings: object) -> None:
        """Run the monitor with these settings (beside the common overrides), restarting it if it runs others."""
        wanted = {**self.overrides, **settings}
        if self.monitor is not None and self.monitor_settings == wanted:
            return
        if self.monitor is not None:
            await self.monitor.stop(timeout=15)
            self.processes.remove(self.monitor)
        self.monitor = await self.flow.start("monitor", **wanted)
        self.monitor_settings = wanted
        self.processes.append(self.monitor)
        progress(f"started monitor (pid {self.monitor.proc.pid}) with {settings or 'the defaults'}")

    def say(self, line: str = "") -> None:
        print(line, flush=True)

    async def warm_up(self) -> None:
        count = self.args.warmup
        if count <= 0:
            return
        progress(f"warm-up: {count} files, not counted")
        closed = [c async for c in await self._closes(count, self.args.size, "warm-up")]
        missing = await self.events.wait_for([c.archive_id for c in closed], timeout=60)
        if missing:
            raise RuntimeError(f"warm-up: {len(missing)} files never archived; see the services' logs")

    async def _closes(self, count: int, size: int, what: str) -> AsyncIterator[Closed]:
        """Files closed at ``--rate``: written ahead now and renamed into place as iterated, or written live."""
        if self.args.writer == "live":
            return write_live(self.live, count, size, self.args.rate)
        return self.ahead.close_at_rate(await self.ahead.write(count, size, what), self.args.rate)

    async def latency(self) -> None:
        args = self.args
        count = max(1, round(args.rate * args.duration))
        progress(f"latency: {count} files of {args.size / MB:g} MB at {args.rate:g} files/s ({args.writer} writer)")
        closes = await self._closes(count, args.size, "latency")
        cpu = CpuClock(self._pids())
        first_lines = [len(p.lines) for p in self.processes]
        cpu.start()
        closed: list[Closed] = []
        started = time.perf_counter()
        async for c in closes:
            closed.append(c)
            if len(closed) % max(1, round(args.rate * 5)) == 0:
                progress(f"  {len(closed)}/{count} closed, {len(self._arrived(closed))} archived")
        closing = time.perf_counter() - started
        missing = await self.events.wait_for([c.archive_id for c in closed], timeout=60)
        cpu_lines = cpu.report()
        latencies = [self.events.received[c.archive_id] - c.closed_at for c in closed if c.archive_id not in missing]
        p99 = percentile(latencies, 0.99) if latencies else math.inf
        self.say(f"Latency, file closed -> file.archived received, {args.size / MB:g} MB files:")
        self.say(f"  {count} files closed in {closing:.1f}s ({count / closing:.2f} files/s), {args.writer} writer")
        self.say(f"  {spread(latencies)}")
        self.say(f"  not archived within 60 s: {len(missing)}; events received twice: {self.events.duplicates}")
        verdict = "met" if p99 < LATENCY_AIM and not missing else "MISSED"
        self.say(f"  aim: p99 under {LATENCY_AIM:g}s at 5 files/s on 2 cores -> {verdict} (p99 {p99:.3f}s)")
        self.say("  where the time goes (from the services' logs):")
        for line in stage_breakdown(self.processes, closed, self.events.received):
            self.say(line)
        for line in cpu_lines:
            self.say(f"  {line}")
        for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
            self.say(line)

    async def throughput(self) -> None:
        args = self.args
        sizes = [args.big_size] * args.big_count
        total_mb = sum(sizes) / MB
        progress(f"throughput: {args.big_count} files of {args.big_size / MB:g} MB, closed at once")
        files = await self.ahead.write(args.big_count, args.big_size, "throughput")
        progress("  disk: dd conv=fdatasync, the same sizes")
        disk_before = await asyncio.to_thread(disk_write_rate, self.flow.root, [f.size_bytes for f in files])
        progress(f"  disk before: {disk_before:.0f} MB/s")
        await asyncio.to_thread(os.sync)
        cpu = CpuClock(self._pids())
        first_lines = [len(p.lines) for p in self.processes]
        cpu.start()
        closed = [self.ahead.close(f) for f in files]
        missing = await self.events.wait_for([c.archive_id for c in closed], timeout=args.big_timeout)
        cpu_lines = cpu.report()
        if missing:
            self.say(f"Throughput: {len(missing)} of {len(closed)} files not archived within {args.big_timeout:g}s")
            return
        first_close = min(c.closed_at for c in closed)
        last_event = max(self.events.received[c.archive_id] for c in closed)
        pipeline = sum(c.size_bytes for c in closed) / MB / (last_event - first_close)
        progress("  disk again: dd conv=fdatasync, the same sizes")
        disk_after = await asyncio.to_thread(disk_write_rate, self.flow.root, [f.size_bytes for f in files])
        disk = (disk_before + disk_after) / 2
        ratio = pipeline / disk
        latencies = [self.events.received[c.archive_id] - c.closed_at for c in closed]
        self.say(f"Throughput, {len(closed)} files of {args.big_size / MB:g} MB ({total_mb:.0f} MB) closed at once:")
        self.say(
            f"  pipeline: {pipeline:.0f} MB/s from the first close to the last file.archived "
            f"({last_event - first_close:.2f}s); per file close -> archived: {spread(latencies, digits=2)}"
        )
        self.say(
            f"  disk:     {disk:.0f} MB/s durable writes of the same bytes once (dd conv=fdatasync, one file each; "
            f"{disk_before:.0f} MB/s before the batch, {disk_after:.0f} MB/s after)"
        )
        verdict = "met" if ratio >= THROUGHPUT_AIM else "MISSED"
        self.say(f"  ratio pipeline/disk: {ratio:.2f} -> aim at least {THROUGHPUT_AIM:g}: {verdict}")
        self.say(
            "  not counted: the simulator's own write of the files (done and synced before the clock starts); "
            "counted: the monitor's read, FITS check and sha256, the HTTP stream, the receiver's sha256, write and "
            "fsync, the ingestor's sha256, header check and rename, the commits and publishes"
        )
        self.say("  where the time goes (from the services' logs):")
        for line in stage_breakdown(self.processes, closed, self.events.received):
            self.say(line)
        for line in cpu_lines:
            self.say(f"  {line}")
        for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
            self.say(line)

    async def small_files(self) -> None:
        """Many small files through the path, ``concurrency`` at a time, beside the minimal receiver."""
        args = self.args
        for concurrency in args.small_concurrency:
            count, size = args.small_count, args.small_size
            progress(f"small files: {count} files of {size / MB:g} MB, {concurrency} at a time")
            files = await self.ahead.write(count, size, "small")
            # One at a time: the monitor evaluates and uploads one file after another, as one client would.
            await self.use_monitor(
                upload_concurrency=concurrency, dep_concurrency=min(concurrency, os.cpu_count() or 1)
            )
            cpu = CpuClock(self._pids())
            first_lines = [len(p.lines) for p in self.processes]
            cpu.start()
            closed = [self.ahead.close(f) for f in files]
            missing = await self.events.wait_for([c.archive_id for c in closed], timeout=args.big_timeout)
            cpu_lines = cpu.report()
            skyport_used = dict(cpu.used)
            if missing:
                self.say(f"Small files: {len(missing)} of {count} not archived within {args.big_timeout:g}s")
                return
            seconds = max(self.events.received[c.archive_id] for c in closed) - min(c.closed_at for c in closed)
            load_after = load()
            await asyncio.to_thread(os.sync)
            paths = [self.flow.watch_root / c.relative_path for c in closed]
            floor = CpuClock({"minimal receiver": self._minimal_pid(), "bench": os.getpid()})
            floor.start()
            floor_seconds = await self.minimal.upload(paths, concurrency)
            floor.report()
            rate, floor_rate = count / seconds, count / floor_seconds
            aim = SMALL_AIMS.get(concurrency)
            self.say(f"Small files, {count} of {size / MB:g} MB, {concurrency} at a time ({load_after}):")
            verdict = "" if aim is None else f" (aim at least {aim:g}: {'met' if rate >= aim else 'MISSED'})"
            self.say(
                f"  skyport: {rate:.1f} files/s, {rate * size / MB:.0f} MB/s, first close to last file.archived "
                f"in {seconds:.2f}s{verdict}"
            )
            self.say(
                f"  minimal receiver: {floor_rate:.1f} files/s, {floor_rate * size / MB:.0f} MB/s "
                f"(PUT, write, fsync, one row; {concurrency} client(s))"
            )
            self.say(f"  ratio skyport/minimal: {rate / floor_rate:.2f}")
            total = sum(skyport_used.values()) / count * 1000
            self.say(
                f"  skyport {cpu_per_file(skyport_used, count)}; aim under {CPU_AIM_MS:g} -> "
                f"{'met' if total < CPU_AIM_MS else 'MISSED'}"
            )
            self.say(f"  minimal {cpu_per_file(floor.used, count)}")
            self.say(f"  {peak_resident(self._pids())}")
            self.say("  where the time goes (from the services' logs):")
            for line in stage_breakdown(self.processes, closed, self.events.received):
                self.say(line)
            for line in cpu_lines:
                self.say(f"  {line}")
            for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
                self.say(line)

    async def single_file(self) -> None:
        """One big file through the path, beside dd and the minimal receiver."""
        args = self.args
        size = args.single_size
        progress(f"single file: {size / MB:g} MB")
        await self.use_monitor()
        (simulated,) = await self.ahead.write(1, size, "single")
        disk_before = await asyncio.to_thread(disk_write_rate, self.flow.root, [size])
        await asyncio.to_thread(os.sync)
        cpu = CpuClock(self._pids())
        first_lines = [len(p.lines) for p in self.processes]
        cpu.start()
        closed = self.ahead.close(simulated)
        missing = await self.events.wait_for([closed.archive_id], timeout=args.big_timeout)
        cpu_lines = cpu.report()
        if missing:
            self.say(f"Single file: not archived within {args.big_timeout:g}s")
            return
        seconds = self.events.received[closed.archive_id] - closed.closed_at
        load_after = load()
        await asyncio.to_thread(os.sync)
        floor_seconds = await self.minimal.upload([self.flow.watch_root / closed.relative_path], 1)
        await asyncio.to_thread(os.sync)
        disk_after = await asyncio.to_thread(disk_write_rate, self.flow.root, [size])
        disk = (disk_before + disk_after) / 2
        rate, floor_rate = size / MB / seconds, size / MB / floor_seconds
        ratio = rate / disk
        self.say(f"Single file of {size / MB:g} MB, close -> file.archived ({load_after}):")
        self.say(f"  skyport: {rate:.0f} MB/s ({seconds:.2f}s)")
        self.say(
            f"  disk: {disk:.0f} MB/s (dd conv=fdatasync of the same size; {disk_before:.0f} before, "
            f"{disk_after:.0f} after); ratio skyport/dd {ratio:.2f}, aim at least {SINGLE_AIM:g}: "
            f"{'met' if ratio >= SINGLE_AIM else 'MISSED'}"
        )
        self.say(
            f"  minimal receiver: {floor_rate:.0f} MB/s (PUT, write, fsync, one row); ratio skyport/minimal "
            f"{rate / floor_rate:.2f}"
        )
        self.say(f"  {peak_resident(self._pids())}")
        for line in stage_breakdown(self.processes, [closed], self.events.received):
            self.say(line)
        for line in cpu_lines:
            self.say(f"  {line}")
        for line in warnings_logged(self.processes, first_lines) or ["  no warnings logged"]:
            self.say(line)

    def _minimal_pid(self) -> int:
        assert self.minimal.proc is not None
        return self.minimal.proc.pid

    def _arrived(self, closed: Iterable[Closed]) -> list[Closed]:
        return [c for c in closed if c.archive_id in self.events.received]

    def _pids(self) -> dict[str, int]:
        pids = {"+".join(p.names): p.proc.pid for p in self.processes}
        pids["bench"] = os.getpid()
        return pids


async def run(args: argparse.Namespace) -> None:
    await asyncio.to_thread(ensure_rabbitmq)
    await asyncio.to_thread(ensure_postgresql)
    run_id = uuid.uuid4().hex[:8]
    args.tmp.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="skyport-bench-", dir=args.tmp))
    # The flow makes a database and a RabbitMQ virtual host of its own (and drops them in close()).
    flow = Flow(root, args.amqp_url, args.database_url, site=f"bench{run_id}")
    events = ArchivedEvents(flow.amqp_url, run_id)
    instruments = load_instruments(INSTRUMENTS)
    # Two simulators, on two nights: their archive IDs (dated by the night) never meet.
    tonight = datetime.now(UTC).date()
    ahead = Prewritten(Simulator(instruments, root / "written-ahead", seed=args.seed, night=tonight), flow.watch_root)
    live = Simulator(instruments, flow.watch_root, seed=args.seed + 1, night=tonight - timedelta(days=1))
    minimal = MinimalReceiver(root / "minimal", flow.database_url)
    # The harness's test settings rescan and poll much more often than a service does by default: use the defaults.
    overrides: dict[str, object] = {name: MonitorSettings.model_fields[name].default for name in PRODUCTION_DEFAULTS}
    overrides.update(args.set)
    bench = Bench(args, flow, events, ahead, live, minimal, overrides)
    try:
        progress(f"preparing a clean archive under {root}")
        await flow.prepare()
        await events.start()
        await minimal.start()
        archive_side = [("receiver", "ingestor")] if args.layout == "together" else [("receiver",), ("ingestor",)]
        for names in archive_side:
            bench.processes.append(await flow.start(*names, **overrides))
            progress(f"started {' + '.join(names)} (pid {bench.processes[-1].proc.pid})")
        await bench.use_monitor()
        bench.say(f"Skyport ingest benchmark, {datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} cores")
        processes = ", ".join(" + ".join(p.names) for p in bench.processes)
        layout = "in processes of their own" if args.layout == "separate" else "in one process"
        bench.say(f"  processes: {processes} (--layout {args.layout}: receiver and ingestor {layout})")
        bench.say(f"  work tree: {root} ({_filesystem(root)})")
        bench.say("  settings:")
        for line in effective_settings(flow.env(**overrides)):
            bench.say(line)
        bench.say(f"  {load()}")
        await bench.warm_up()
        if "small" in args.only:
            bench.say()
            await bench.small_files()
        if "single" in args.only:
            bench.say()
            await bench.single_file()
        if "latency" in args.only:
            bench.say()
            await bench.latency()
        if "throughput" in args.only:
            bench.say()
            await bench.throughput()
    except BaseException:
        for line in problems_logged(flow.processes):
            progress(line)
        raise
    finally:
        progress("cleaning up")
        with contextlib.suppress(Exception):
            await minimal.stop()
        for process in reversed(bench.processes):
            with contextlib.suppress(Exception):
                await process.stop(timeout=15)
        try:
            await events.close()
        except Exception as exc:
            progress(f"could not delete the queue {events.queue}: {exc!r}")
        try:
            await asyncio.wait_for(flow.close(), 4 * BROKER_TIMEOUT)
        except Exception as exc:
            progress(f"could not drop the database {flow.database_name} or the vhost {flow.vhost}: {exc!r}")
        finally:
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)


def _filesystem(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        device = os.stat(path).st_dev
        for line in Path("/proc/mounts").read_text().splitlines():
            source, mount, kind = line.split()[:3]
            with contextlib.suppress(OSError):
                if os.stat(mount).st_dev == device:
                    return f"{kind} on {source}"
    return "file system unknown"


def parse_size(text: str) -> int:
    """``10MB``, ``200M``, ``1.5GB`` or a number of bytes (decimal units, as the figures)."""
    found = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)[bB]?\s*", text)
    if found is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[found.group(2).lower()]
    return int(float(found.group(1)) * scale)


def setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` for a service setting (the SKYPORT_NAME environment variable)."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    return name.strip(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="latency: files closed per second (default 5)")
    parser.add_argument("--duration", type=float, default=30.0, help="latency: seconds of closing files (default 30)")
    parser.add_argument("--size", type=parse_size, default=10 * MB, help="latency: file size (default 10MB)")
    parser.add_argument("--warmup", type=int, default=5, help="files through the path before timing (default 5)")
    parser.add_argument("--big-size", type=parse_size, default=200 * MB, help="throughput: file size (default 200MB)")
    parser.add_argument("--big-count", type=int, default=8, help="throughput: files in the batch (default 8)")
    parser.add_argument("--big-timeout", type=float, default=120.0, help="throughput: seconds to wait for the batch")
    parser.add_argument(
        "--writer",
        choices=("ahead", "live"),
        default="ahead",
        help="latency: files written ahead and renamed into place (default), or written by the simulator live",
    )
    parser.add_argument(
        "--layout",
        choices=("separate", "together"),
        default="separate",
        help="receiver and ingestor in two processes (default: the faster here) or in one; the monitor runs alone",
    )
    parser.add_argument("--small-count", type=int, default=300, help="small files: how many (default 300)")
    parser.add_argument("--small-size", type=parse_size, default=MB, help="small files: size (default 1MB)")
    parser.add_argument(
        "--small-concurrency",
        type=int,
        nargs="+",
        default=[1, 8],
        help="small files: files at a time, one run each (default 1 8)",
    )
    parser.add_argument(
        "--single-size", type=parse_size, default=200 * MB, help="single file: its size (default 200MB)"
    )
    phases = ("small", "single", "latency", "throughput")
    parser.add_argument("--only", nargs="+", choices=phases, default=phases, help="phases to run (default all)")
    parser.add_argument("--minimal-receiver", metavar="PORT:FOLDER", help=argparse.SUPPRESS)
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for every process, e.g. --set dep_concurrency=4 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=20260315, help="the simulator's seed")
    parser.add_argument("--amqp-url", default=AMQP_URL, help=f"RabbitMQ (default {AMQP_URL})")
    parser.add_argument("--database-url", default=DATABASE_URL, help=f"PostgreSQL server (default {DATABASE_URL})")
    parser.add_argument(
        "--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the work tree goes (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    if args.minimal_receiver:  # the benchmark's own process for the minimal receiver
        port, _, folder = args.minimal_receiver.partition(":")
        Path(folder).mkdir(parents=True, exist_ok=True)
        asyncio.run(serve_minimal(int(port), Path(folder), args.database_url))
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
