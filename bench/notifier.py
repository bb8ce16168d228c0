"""Benchmark: the notifier's matching against 100,000 subscriptions, and a dataset event's way to the SMTP server.

Run it by hand from the repository root (``.venv/bin/python bench/notifier.py --help``); it is not a test. Linux
only (it reads /proc for CPU times). Everything runs against the local RabbitMQ and PostgreSQL, in a database and
a virtual host of this run's own (the harness of the end-to-end tests, ``tests/support/flow.py``, which drops both
at the end). Two figures, each next to its aim in issue 12, with the machine's load average beside them:

- **matching** (``--part matching``): ``--subscriptions`` (100,000) are written by COPY into the notifier's
  ``subscriptions`` table, a realistic mix: ``--programs`` (20,000) programs of two missions (Keck and JWST, their
  level orders from ``deploy/instruments``; HST alone has had some 17,000 programs), so five subscribers a program
  on average, the size of a team; 70 % of the subscriptions by program, 15 % by obset, 15 % by file; random
  trigger sets (most with ``new``); "this level or above" for 60 % of them; frequencies mostly daily, then fast,
  weekly, hourly and monthly; a few time zones. Then ``--events`` dataset events (new, first, repro, public; one
  to ten files each, some of them files that file subscriptions name) go through the notifier's own batch
  consumer (``handlers.events.dataset_subscription``: its batch handler, which is what the bus calls, in batches
  of ``SKYPORT_NOTIFIER_BATCH_SIZE`` = ``--batch``), each batch one transaction that matches the events with the
  matching statement (``storage.match``), schedules and inserts the notices and records the events' ids. The bus
  itself is left out: this times the matching, not RabbitMQ. Printed: events matched per second, notices made
  per second and per event, and the CPU seconds of this process and of PostgreSQL; then the matching statement
  alone over the same events (read only, nothing written), which says how much of the time is finding the
  subscriptions and how much is writing the notices. Fewer programs (``--programs 2000``) make denser matches
  (about 20 notices per event), whose writing then dominates. Aim: 2,000 events/s.
- **latency** (``--part latency``): the catalog and the notifier run as processes of their own (``skyport run``),
  an aiosmtpd server in this process takes the email. ``--latency-events`` programs each have one fast email
  subscription (trigger ``new``) of one observer, their PI; one ``file.archived`` event per program is published
  on the bus at ``--rate`` per second (as the ingestor does), the catalog catalogues it and publishes
  ``dataset.new``, which the notifier matches and mails. A dataset event's latency is the SMTP server's
  acceptance of the email (the end of DATA, the event found by its id in the email's JSON attachment) minus the
  event's arrival on a queue of this process bound to ``dataset.new.#`` (its publication on the real bus, give or
  take the broker's routing); the latency from the event's own ``time`` (the catalog's commit, before its outbox
  relay published it) is printed beside it. The notifier keeps its default poll interval (1 s) and batch wait.
  Aim: p99 under 5 s.

Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.support`` lives at the repository root, not in the installed packages

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from aiohttp.test_utils import unused_port  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

from services.catalog import cli as catalog  # noqa: E402
from services.notifier import storage  # noqa: E402
from services.notifier.handlers.events import dataset_subscription  # noqa: E402
from services.notifier.levels import LevelOrder  # noqa: E402
from services.notifier.matching import Matcher  # noqa: E402
from services.notifier.settings import NotifierSettings  # noqa: E402
from skyport.bus import Subscription, create_bus  # noqa: E402
from skyport.db import Database  # noqa: E402
from skyport.events import (  # noqa: E402
    EVENT_MODELS,
    CloudEvent,
    DatasetEvent,
    DatasetFile,
    DatasetFirst,
    DatasetNew,
    DatasetPublic,
    DatasetRepro,
    ReproInfo,
)
from skyport.instruments import load_instruments  # noqa: E402
from skyport.logging import configure_logging  # noqa: E402
from tests.support.catalog import archived, event_of  # noqa: E402
from tests.support.flow import INSTRUMENTS, Flow  # noqa: E402
from tests.support.servers import AMQP_URL, DATABASE_URL  # noqa: E402

MATCHING_AIM = 2000.0
"""Dataset events matched per second against 100,000 subscriptions, issue 12, on a 2-core machine."""
LATENCY_P99_AIM_S = 5.0
"""p99 from a dataset event on the bus to the SMTP server's acceptance of the fast email, issue 12."""
MISSIONS = ("KECK", "JWST")
ZONES = ("UTC", "Pacific/Honolulu", "America/New_York", "Europe/Paris", "Asia/Tokyo")
FREQUENCIES = ["daily", "fast", "weekly", "hourly", "monthly"]
FREQUENCY_WEIGHTS = [0.5, 0.2, 0.15, 0.1, 0.05]
EVENT_TYPES: list[type[DatasetEvent]] = [DatasetNew, DatasetRepro, DatasetPublic, DatasetFirst]
EVENT_WEIGHTS = [0.6, 0.25, 0.1, 0.05]
OBSETS_PER_PROGRAM = 20
FILES_PER_PROGRAM = 200
TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def cpu_seconds(pids: Sequence[int] = (), names: Sequence[str] = ()) -> float:
    """utime + stime of the given processes, plus of every process whose command name is one of ``names``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if int(entry) in pids or comm in names:
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
    return total / TICKS


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def new_flow(args: argparse.Namespace, name: str) -> Flow:
    root = Path(tempfile.mkdtemp(prefix=f"skyport-bench-notifier-{name}-"))
    flow = Flow(root, args.amqp_url, args.database_url, site=f"bench{uuid.uuid4().hex[:8]}")
    try:
        await flow.prepare()
    except BaseException:
        with contextlib.suppress(Exception):
            await flow.close()  # what prepare made before it failed
        raise
    return flow


# --- matching --------------------------------------------------------------------------------------------


def program_of(index: int) -> tuple[str, str]:
    return MISSIONS[index % len(MISSIONS)], f"BP{index:05d}"


def archive_id_of(program: int, file: int) -> str:
    return f"{program_of(program)[0]}.BENCH{program:05d}.{file:04d}"


def subscriptions(count: int, programs: int, levels: dict[str, list[str]], rng: random.Random) -> list[tuple[Any, ...]]:
    """``count`` rows of ``notifier.subscriptions``, a realistic mix (see the module's docstring)."""
    rows = []
    for i in range(count):
        program = rng.randrange(programs)
        mission, propid = program_of(program)
        kind = rng.random()
        obset = archive_id = None
        if kind < 0.15:
            obset = f"o{rng.randrange(OBSETS_PER_PROGRAM):03d}"
        elif kind < 0.30:
            archive_id = archive_id_of(program, rng.randrange(FILES_PER_PROGRAM))
        triggers = [t for t in ("new", "first", "repro", "public") if rng.random() < 0.5]
        if "new" not in triggers and rng.random() < 0.7:
            triggers.insert(0, "new")
        triggers = triggers or ["public"]
        min_level = rng.choice(levels[mission]) if rng.random() < 0.6 else None
        rows.append(
            (
                f"user{i % (count // 3 + 1):06d}",
                f"user{i % (count // 3 + 1):06d}@example.org",
                mission,
                propid,
                obset,
                archive_id,
                triggers,
                min_level,
                rng.choices(FREQUENCIES, FREQUENCY_WEIGHTS)[0],
                time_of_day(rng.randrange(24), rng.choice((0, 30))),
                rng.choice(ZONES),
            )
        )
    return rows


def dataset_events(
    count: int, programs: int, levels: dict[str, list[str]], rng: random.Random
) -> list[CloudEvent[Any]]:
    """``count`` dataset events over the programs, one to ten files each."""
    events = []
    for _ in range(count):
        program = rng.randrange(programs)
        mission, propid = program_of(program)
        model = rng.choices(EVENT_TYPES, EVENT_WEIGHTS)[0]
        obset = f"o{rng.randrange(OBSETS_PER_PROGRAM):03d}"
        files = []
        for _ in range(rng.randint(1, 10)):
            archive_id = archive_id_of(program, rng.randrange(FILES_PER_PROGRAM))
            files.append(
                DatasetFile(
                    archive_id=archive_id,
                    version=2 if model is DatasetRepro else 1,
                    size_bytes=rng.randrange(1 << 20, 1 << 30),
                    sha256=f"{rng.getrandbits(256):064x}",
                    url=f"http://127.0.0.1:8082/v1/files/{archive_id}",
                    obset=obset,
                )
            )
        data = model(
            type=model.dataset_type,
            mission=mission,
            propid=propid,
            obsets=[obset],
            level=rng.choice(levels[mission]),
            files=files,
            repro=ReproInfo(software_version="11.2", reference_files=["jwst_0001.pmap"], supersedes_version=1)
            if model is DatasetRepro
            else None,
        )
        events.append(CloudEvent.create(data, source="/skyport/catalog"))
    return events


async def matching(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    instruments = load_instruments(INSTRUMENTS)
    order = LevelOrder.of(instruments)
    levels = {mission: list(instruments.missions[mission].levels) for mission in MISSIONS}
    flow = await new_flow(args, "matching")
    try:
        db = await Database.connect(flow.database_url, "notifier", min_size=1, max_size=2)
        try:
            progress(f"writing {args.subscriptions:,} subscriptions over {args.programs:,} programs")
            rows = subscriptions(args.subscriptions, args.programs, levels, rng)
            columns = [
                "username",
                "email",
                "mission",
                "propid",
                "obset",
                "archive_id",
                "triggers",
                "min_level",
                "frequency",
                "time_of_day",
                "time_zone",
            ]
            async with db.pool.acquire() as conn:
                await conn.copy_records_to_table("subscriptions", records=rows, columns=columns, schema_name="notifier")
                await conn.execute("ANALYZE notifier.subscriptions")
            settings = NotifierSettings(
                database_url=flow.database_url,
                notifier_public_url="http://127.0.0.1:8083",
                notifier_catalog_token="unused",
                notifier_signing_secret="b" * 40,
                smtp_host="127.0.0.1",
                notifier_batch_size=args.batch,
            )
            consumer = dataset_subscription(db, Matcher(order), settings, asyncio.Event())
            assert consumer.batching is not None
            handle = consumer.batching.handler
            warmup = dataset_events(args.batch, args.programs, levels, rng)
            events = dataset_events(args.events, args.programs, levels, rng)
            await handle(warmup)  # the plan and the caches warm, not counted
            async with db.pool.acquire() as conn:
                before_notices = int(await conn.fetchval("SELECT count(*) FROM notifier.pending_notices"))
            progress(f"matching {args.events:,} dataset events in batches of {args.batch}")
            load_before = load()
            cpu_before = (cpu_seconds([os.getpid()]), cpu_seconds(names=["postgres"]))
            started = time.perf_counter()
            for first in range(0, len(events), args.batch):
                await handle(events[first : first + args.batch])
            elapsed = time.perf_counter() - started
            cpu_after = (cpu_seconds([os.getpid()]), cpu_seconds(names=["postgres"]))
            async with db.pool.acquire() as conn:
                notices = int(await conn.fetchval("SELECT count(*) FROM notifier.pending_notices")) - before_notices
                handled = int(await conn.fetchval("SELECT count(*) FROM notifier.processed_events"))
            assert handled == len(events) + len(warmup), f"{handled} events recorded as handled"
            statement = await statement_alone(db, order, events, args.batch)
        finally:
            await db.close()
    finally:
        await flow.close()
    return {
        "events": len(events),
        "seconds": elapsed,
        "notices": notices,
        "statement_seconds": statement,
        "cpu_bench": cpu_after[0] - cpu_before[0],
        "cpu_postgres": cpu_after[1] - cpu_before[1],
        "load_before": load_before,
        "load_after": load(),
    }


async def statement_alone(db: Database, order: LevelOrder, events: list[CloudEvent[Any]], batch: int) -> float:
    """Seconds the matching statement (``storage.match``) takes over ``events`` in batches, the events described
    as :class:`~services.notifier.matching.Matcher` describes them, in read-only transactions."""
    described = [
        storage.MatchedEvent(
            mission=e.data.mission.upper(),
            propid=e.data.propid,
            type=e.data.type,
            obsets=sorted(set(e.data.obsets)),
            levels_at_or_below=order.at_or_below(e.data.mission, e.data.level),
            archive_ids=sorted({f.archive_id for f in e.data.files}),
        )
        for e in events
    ]
    started = time.perf_counter()
    async with db.pool.acquire() as conn:
        for first in range(0, len(described), batch):
            async with conn.transaction(readonly=True):
                await storage.match(conn, described[first : first + batch])
    return time.perf_counter() - started


# --- latency ---------------------------------------------------------------------------------------------


class Accepting:
    """aiosmtpd's handler: when each email was accepted, by the dataset event ids its JSON attachment names."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self.emails = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.time()
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.emails += 1
            for part in message.iter_attachments():
                if part.get_filename() == "skyport-notice.json":
                    for notice in json.loads(part.get_content())["notices"]:
                        self.accepted.setdefault(notice["event_id"], at)
        return "250 OK"


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    flow = await new_flow(args, "latency")
    handler = Accepting()
    smtp = Controller(handler, hostname="127.0.0.1", port=unused_port())
    smtp.start()
    flow.smtp_port = smtp.port
    bus = create_bus(flow.amqp_url, service=f"bench-notifier-{run_id}")
    arrived: dict[str, tuple[float, datetime, str]] = {}  # event id: arrival, the event's time, its propid

    async def on_dataset(event: CloudEvent[Any]) -> None:
        arrived[event.id] = (time.time(), event.time, event.data.propid)

    try:
        programs = [f"L{run_id}P{i:04d}" for i in range(args.latency_events)]
        db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=1)
        try:
            await catalog.add_user(db, "observer", email="observer@example.org")
            for propid in programs:
                await catalog.add_program(db, "KECK", propid, title=f"Bench {propid}", pi="observer")
        finally:
            await db.close()
        await flow.start("catalog")
        notifier = await flow.start("notifier", notifier_poll_interval=1.0)  # the default, not the harness's 0.2
        token = await flow.user_token("observer")
        progress(f"{len(programs)} fast subscriptions of the observer, one per program")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            for propid in programs:
                body = {"mission": "KECK", "propid": propid, "triggers": ["new"], "frequency": "fast"}
                async with http.post(f"{flow.notifier_url}/v1/subscriptions", json=body) as response:
                    assert response.status == 201, await response.text()
        await bus.start()
        await bus.subscribe(
            Subscription(f"bench.{run_id}.datasets", ("dataset.new.#",), on_dataset, models=EVENT_MODELS)
        )
        progress(f"publishing {len(programs)} file.archived events at {args.rate}/s")
        load_before = load()
        cpu_before = cpu_seconds([notifier.proc.pid])
        started = time.monotonic()
        for i, propid in enumerate(programs):
            await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
            await bus.publish(event_of(archived(f"KECK.LAT{run_id}.{i:05d}", propid=propid)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with handler.lock:
                done = len(handler.accepted)
            if done >= len(programs):
                break
            await asyncio.sleep(0.2)
        cpu_notifier = cpu_seconds([notifier.proc.pid]) - cpu_before
        with handler.lock:
            accepted = dict(handler.accepted)
            emails = handler.emails
        from_bus = [accepted[i] - at for i, (at, _, _) in arrived.items() if i in accepted]
        from_time = [accepted[i] - when.timestamp() for i, (_, when, _) in arrived.items() if i in accepted]
        return {
            "events": len(programs),
            "arrived": len(arrived),
            "mailed": len(from_bus),
            "emails": emails,
            "from_bus": from_bus,
            "from_time": from_time,
            "cpu_notifier": cpu_notifier,
            "seconds": time.monotonic() - started,
            "load_before": load_before,
            "load_after": load(),
        }
    finally:
        await bus.close()
        smtp.stop()
        await flow.close()


# --- the run ---------------------------------------------------------------------------------------------


def report_matching(args: argparse.Namespace, m: dict[str, Any]) -> None:
    rate = m["events"] / m["seconds"]
    print(
        f"matching: {m['events']:,} dataset events against {args.subscriptions:,} subscriptions in "
        f"{m['seconds']:.2f} s: {rate:,.0f} events/s (aim >= {MATCHING_AIM:,.0f}: "
        f"{'met' if rate >= MATCHING_AIM else 'NOT met'})"
    )
    print(
        f"  notices made: {m['notices']:,} ({m['notices'] / m['events']:.1f} per event, "
        f"{m['notices'] / m['seconds']:,.0f}/s); batches of {args.batch}"
    )
    print(f"  CPU seconds: this process {m['cpu_bench']:.1f}, PostgreSQL {m['cpu_postgres']:.1f}")
    print(
        f"  the matching statement alone (nothing written): {m['statement_seconds']:.2f} s, "
        f"{m['events'] / m['statement_seconds']:,.0f} events/s"
    )
    print(f"  {m['load_before']} before, {m['load_after']} after")


def report_latency(args: argparse.Namespace, m: dict[str, Any]) -> None:
    bus, stamped = m["from_bus"], m["from_time"]
    p99 = percentile(bus, 99)
    print(
        f"latency, dataset.new on the bus -> SMTP acceptance of the fast email: {m['mailed']}/{m['events']} "
        f"events mailed ({m['emails']} emails) at {args.rate}/s: p50 {percentile(bus, 50):.2f} s, "
        f"p99 {p99:.2f} s, max {max(bus, default=float('nan')):.2f} s (aim p99 < {LATENCY_P99_AIM_S:.0f} s: "
        f"{'met' if p99 < LATENCY_P99_AIM_S and m['mailed'] == m['events'] else 'NOT met'})"
    )
    print(
        f"  from the event's time (the catalog's commit, before its outbox relay): p50 "
        f"{percentile(stamped, 50):.2f} s, p99 {percentile(stamped, 99):.2f} s"
    )
    print(f"  notifier CPU seconds: {m['cpu_notifier']:.1f} over {m['seconds']:.0f} s")
    print(f"  {m['load_before']} before, {m['load_after']} after")


async def run(args: argparse.Namespace) -> None:
    configure_logging("console", "WARNING")  # the harness's migrations and processes say nothing the figures need
    if args.part in ("matching", "all"):
        report_matching(args, await matching(args))
    if args.part in ("latency", "all"):
        report_latency(args, await latency(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--part", choices=("matching", "latency", "all"), default="all", help="what to run")
    parser.add_argument("--subscriptions", type=int, default=100_000, help="matching: subscriptions (100,000)")
    parser.add_argument("--programs", type=int, default=20_000, help="matching: programs they are about (20,000)")
    parser.add_argument("--events", type=int, default=10_000, help="matching: dataset events timed (10,000)")
    parser.add_argument("--batch", type=int, default=200, help="matching: events per batch (the default setting)")
    parser.add_argument("--latency-events", type=int, default=200, help="latency: events timed (200)")
    parser.add_argument("--rate", type=float, default=5.0, help="latency: file.archived events per second (5)")
    parser.add_argument("--seed", type=int, default=20261201, help="the random mix's seed")
    parser.add_argument("--amqp-url", default=AMQP_URL, help=f"RabbitMQ (default {AMQP_URL})")
    parser.add_argument("--database-url", default=DATABASE_URL, help=f"PostgreSQL server (default {DATABASE_URL})")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
