"""Benchmark: catalogue throughput from a burst of file.archived events, and cone-search latency on a big catalog.

Run it by hand from the repository root (``.venv/bin/python bench/catalog.py --help``); it is not a test. Linux
only (it reads /proc for CPU times). Two figures, each next to its aim in issue 4:

- **throughput**: the catalog runs as its own process (``skyport run catalog``) against the local RabbitMQ and
  PostgreSQL, in a virtual host and a database of this run's own (the harness of the end-to-end tests,
  ``tests/support/flow.py``). ``--events`` ``file.archived`` events for many programs, with the metadata an
  instrument configuration extracts (``tests/support/catalog.py``), are published at once with the Skyport bus;
  the time from the first publish until ``catalog.products`` holds them all gives products per second. The rate
  of the dataset events the catalog sent (outbox rows with ``sent_at``) is printed beside it, and the CPU seconds
  of the catalog process, of PostgreSQL and of RabbitMQ during the burst. Aim: 2,000 products/s on 2 cores.
- **cone search**: a separate database, migrated with the catalog's schema, is filled by COPY with ``--rows``
  products spread uniformly on the sphere (only the columns a cone search reads, and cheap values in the NOT NULL
  ones), then analysed. ``--cones`` random cones per radius (1 arcminute and 0.5 degree) run through the API's
  own SQL (``services.catalog.sky.cone`` and ``services.catalog.storage.sql.cone_condition``); the wall time of each,
  the cone's cell ranges computed in Python included, gives p50/p95/max. Aim: p95 under 10 ms for 1 arcminute.

Progress goes to stderr, figures to stdout. The virtual host and the databases are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.support`` lives at the repository root, not in the installed packages

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402
from yarl import URL  # noqa: E402

from services.catalog.sky import cone, healpix_index  # noqa: E402
from services.catalog.storage.sql import Params, cone_condition  # noqa: E402
from skyport.bus import create_bus  # noqa: E402
from skyport.events import FileArchived  # noqa: E402
from tests.support.catalog import archived, event_of  # noqa: E402
from tests.support.flow import Flow, ServiceProcess, _rabbitmqctl  # noqa: E402
from tests.support.servers import AMQP_URL, DATABASE_URL  # noqa: E402

THROUGHPUT_AIM = 2000.0
"""Products catalogued per second, issue 4, on a 2-core machine."""
CONE_P95_AIM_MS = 10.0
"""p95 of a 1-arcminute cone search on 10 million rows, issue 4."""
RADII = (("1 arcmin", 1.0 / 60.0), ("0.5 deg", 0.5))
TARGETS = ("HD 189733", "M31", "NGC 1275", "Kepler-22", "TRAPPIST-1", "SN 2026abc", "Abell 1689", "flat", "dark")
TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


# --- throughput ------------------------------------------------------------------------------------------


def burst(count: int, programs: int, seed: int) -> list[FileArchived]:
    """``count`` new files over ``programs`` programs and a few missions, with realistic metadata."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        program = i % programs
        mission, instrument = (("KECK", "HIRES"), ("KECK", "NIRSPEC"), ("JWST", "NIRCAM"))[program % 3]
        ra = rng.uniform(0.0, 360.0)
        dec = math.degrees(math.asin(rng.uniform(-1.0, 1.0)))
        past = rng.random() < 0.05  # a few arrive after their release date and are public at once
        events.append(
            archived(
                f"{mission}.BENCH{i:08d}",
                propid=f"B{seed % 1000:03d}P{program:04d}",
                mission=mission,
                instrument=instrument,
                level=rng.choice(("0", "1", "2")) if mission == "KECK" else rng.choice(("1b", "2a", "2b")),
                obset=f"o{i // 20:06d}",
                release_date=date(2020, 1, 1) if past else date(2027 + rng.randrange(3), 1 + rng.randrange(12), 1),
                ra=ra,
                dec=dec,
                metadata={
                    "target_name": rng.choice(TARGETS),
                    "exptime_s": round(rng.uniform(1.0, 1800.0), 1),
                    "intent": "calibration" if rng.random() < 0.2 else "science",
                    "header": {"FRAMENO": i, "AIRMASS": round(rng.uniform(1.0, 2.5), 3), "TELESCOP": mission},
                },
            )
        )
    return events


async def throughput(args: argparse.Namespace) -> dict[str, float]:
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="skyport-bench-catalog-") as tmp:
        flow = Flow(Path(tmp), args.amqp_url, args.database_url, site=f"benchcat{run_id}")
        service: ServiceProcess | None = None
        try:
            conn = await asyncpg.connect(args.database_url)
            try:
                await conn.execute(f"CREATE DATABASE {flow.database_name}")
            finally:
                await conn.close()
            await _rabbitmqctl("add_vhost", flow.vhost)
            await _rabbitmqctl("set_permissions", "-p", flow.vhost, "guest", ".*", ".*", ".*")
            progress(f"database {flow.database_name} and virtual host {flow.vhost} made; migrating the catalog")
            await flow.skyport("migrate", "catalog")
            service = await flow.start("catalog", health_port=0, catalog_port=0, log_format="json")
            assert service.proc.pid is not None
            progress(f"catalog running (pid {service.proc.pid}); building {args.events} file.archived events")
            events = [event_of(data) for data in burst(args.events, args.programs, args.seed)]
            bus = create_bus(flow.amqp_url, service="bench")
            await bus.start()
            db = await asyncpg.connect(flow.database_url)
            try:
                cpu_before = (
                    cpu_seconds([service.proc.pid]),
                    cpu_seconds(names=("postgres",)),
                    cpu_seconds(names=("beam.smp",)),
                )
                started = time.perf_counter()
                for first in range(0, len(events), args.window):
                    await asyncio.gather(*(bus.publish(e) for e in events[first : first + args.window]))
                published = time.perf_counter() - started
                progress(f"published {len(events)} events in {published:.2f} s; waiting for the products")
                done = outbox_done = None
                last_report = started
                deadline = started + args.timeout
                while time.perf_counter() < deadline:
                    products = await db.fetchval("SELECT count(*) FROM catalog.products")
                    now = time.perf_counter()
                    if done is None and products >= len(events):
                        done = now
                    if done is not None:
                        unsent = await db.fetchval("SELECT count(*) FROM catalog.outbox WHERE sent_at IS NULL")
                        if unsent == 0:
                            outbox_done = now
                            break
                    if now - last_report >= 2:
                        progress(f"{products} products after {now - started:.1f} s")
                        last_report = now
                    await asyncio.sleep(0.05)
                cpu_after = (
                    cpu_seconds([service.proc.pid]),
                    cpu_seconds(names=("postgres",)),
                    cpu_seconds(names=("beam.smp",)),
                )
                if done is None or outbox_done is None:
                    raise RuntimeError(f"the catalog did not catalogue {len(events)} files within {args.timeout} s")
                sent = await db.fetchval("SELECT count(*) FROM catalog.outbox WHERE sent_at IS NOT NULL")
                by_type = await db.fetch("SELECT event_type, count(*) FROM catalog.outbox GROUP BY 1 ORDER BY 1")
            finally:
                await db.close()
                await bus.close()
            elapsed = done - started
            return {
                "events": len(events),
                "published_s": published,
                "elapsed_s": elapsed,
                "rate": len(events) / elapsed,
                "sent": sent,
                "outbox_s": outbox_done - started,
                "sent_rate": sent / (outbox_done - started),
                "cpu_catalog": cpu_after[0] - cpu_before[0],
                "cpu_postgres": cpu_after[1] - cpu_before[1],
                "cpu_rabbitmq": cpu_after[2] - cpu_before[2],
                "by_type": ", ".join(f"{r[0]} {r[1]}" for r in by_type),  # type: ignore[dict-item]
            }
        finally:
            progress("removing the catalog process, the virtual host and the database")
            if service is not None and service.proc.returncode is None:
                with contextlib.suppress(Exception):
                    await service.stop()
            await flow.close()


# --- cone search -----------------------------------------------------------------------------------------

_FILL_COLUMNS = (
    "archive_id",
    "version",
    "mission",
    "propid",
    "level",
    "intent",
    "original_filename",
    "release_date",
    "obs_collection",
    "obs_id",
    "s_ra",
    "s_dec",
    "healpix",
    "instrument_name",
    "facility_name",
    "access_format",
    "access_estsize",
    "first_archived_at",
    "archived_at",
    "catalogued_at",
    "seq",
)


def sky_positions(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions uniform on the sphere and their order-29 NESTED cells (cdshealpix, checked against sky.py)."""
    import astropy.units as u
    from cdshealpix.nested import lonlat_to_healpix

    ra = rng.uniform(0.0, 360.0, count)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, count)))
    cells = lonlat_to_healpix(ra * u.deg, dec * u.deg, 29).astype(np.int64)
    return ra, dec, cells


def fill_records(ra: np.ndarray, dec: np.ndarray, cells: np.ndarray, offset: int) -> Iterator[tuple[Any, ...]]:
    from datetime import UTC, datetime

    moment = datetime(2026, 1, 1, tzinfo=UTC)
    released = date(2026, 1, 1)
    for i, (r, d, h) in enumerate(zip(ra.tolist(), dec.tolist(), cells.tolist(), strict=True), start=offset):
        name = f"C{i:09d}"
        yield (
            name,
            1,
            "KECK",
            "BENCH",
            "0",
            "science",
            "f.fits",
            released,
            "KECK",
            name,
            r,
            d,
            h,
            "HIRES",
            "KECK",
            "application/fits",
            2000,
            moment,
            moment,
            moment,
            i,
        )


async def cone_search(args: argparse.Namespace) -> dict[str, Any]:
    from services.catalog.app import service as catalog_service
    from skyport.db import LIBRARY_MIGRATIONS, Migrator

    assert catalog_service.migrations is not None
    name = f"bench_cone_{uuid.uuid4().hex[:8]}"
    url = str(URL(args.database_url).with_path(f"/{name}"))
    server = await asyncpg.connect(args.database_url)
    try:
        await server.execute(f"CREATE DATABASE {name}")
        try:
            conn = await asyncpg.connect(url)
            try:
                return await _cone_search(conn, args, Migrator, LIBRARY_MIGRATIONS, catalog_service.migrations)
            finally:
                await conn.close()
        finally:
            progress(f"dropping database {name}")
            await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await server.close()


async def _cone_search(
    conn: asyncpg.Connection, args: argparse.Namespace, migrator: Any, library: Any, migrations: Any
) -> dict[str, Any]:
    await conn.execute("CREATE SCHEMA catalog")
    await conn.execute("SET search_path TO catalog")
    await migrator("catalog", {"skyport": library, "catalog": migrations}).apply(conn)
    await conn.execute("INSERT INTO programs (mission, propid) VALUES ('KECK', 'BENCH')")
    # The indexes the fill would update row by row are built once afterwards, as they are in the migration.
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'catalog' AND tablename = 'products'"
        " AND indexname IN ('products_healpix', 'products_program', 'products_t_min', 'products_release')"
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['indexname']}")
    rng = np.random.default_rng(args.seed)
    sample_ra, sample_dec, sample_cells = sky_positions(10_000, rng)
    mismatches = sum(
        healpix_index(r, d) != c
        for r, d, c in zip(sample_ra.tolist(), sample_dec.tolist(), sample_cells.tolist(), strict=True)
    )
    if mismatches:
        raise RuntimeError(f"cdshealpix and services.catalog.sky.healpix_index differ on {mismatches} of 10000")
    progress(f"filling {args.rows:,} products by COPY (cdshealpix agrees with sky.healpix_index on 10,000 positions)")
    started = time.perf_counter()
    chunk = 500_000
    for first in range(0, args.rows, chunk):
        ra, dec, cells = sky_positions(min(chunk, args.rows - first), rng)
        await conn.copy_records_to_table(
            "products", schema_name="catalog", columns=_FILL_COLUMNS, records=fill_records(ra, dec, cells, first)
        )
        progress(f"{first + len(ra):,} rows after {time.perf_counter() - started:.0f} s")
    copied = time.perf_counter() - started
    for index in indexes:
        progress(f"building {index['indexname']}")
        await conn.execute(index["indexdef"])
    await conn.execute("ANALYZE products")
    filled = time.perf_counter() - started
    progress(f"filled in {filled:.0f} s (COPY {copied:.0f} s, indexes and ANALYZE {filled - copied:.0f} s)")
    cone(0.0, 0.0, 0.1)  # astropy and cdshealpix load on the first cone: not part of any query's time
    results = {"rows": args.rows, "fill_s": filled, "copy_s": copied, "radii": []}
    for label, radius in RADII:
        times, counts = [], []
        for _ in range(args.warmup + args.cones):
            ra = float(rng.uniform(0.0, 360.0))
            dec = float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0))))
            begun = time.perf_counter()
            params = Params()
            condition = cone_condition(cone(ra, dec, radius), params, alias="p")
            rows = await conn.fetch(f"SELECT p.archive_id FROM products p WHERE {condition}", *params.values)
            times.append(time.perf_counter() - begun)
            counts.append(len(rows))
        times, counts = times[args.warmup :], counts[args.warmup :]
        ms = np.array(times) * 1000
        results["radii"].append(
            {
                "label": label,
                "p50": float(np.percentile(ms, 50)),
                "p95": float(np.percentile(ms, 95)),
                "max": float(ms.max()),
                "mean_rows": float(np.mean(counts)),
            }
        )
        progress(f"{label}: p95 {results['radii'][-1]['p95']:.2f} ms")
    return results


# --- main ------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    if not args.skip_throughput:
        t = await throughput(args)
        print(f"catalogue throughput: {t['events']} file.archived events, published in {t['published_s']:.2f} s")
        print(
            f"  products catalogued: {t['rate']:,.0f}/s ({t['elapsed_s']:.2f} s for all)"
            f"   aim: at least {THROUGHPUT_AIM:,.0f}/s on a 2-core machine ({os.cpu_count()} cores here)"
        )
        sent = f"{t['sent']} in {t['outbox_s']:.2f} s = {t['sent_rate']:,.0f}/s"
        print(f"  dataset events sent: {sent} ({t['by_type']})")
        print(
            f"  CPU seconds during the burst: catalog {t['cpu_catalog']:.1f}, PostgreSQL {t['cpu_postgres']:.1f},"
            f" RabbitMQ {t['cpu_rabbitmq']:.1f} (of {t['elapsed_s'] * (os.cpu_count() or 1):.1f} available)"
        )
        sys.stdout.flush()
    if not args.skip_cones:
        c = await cone_search(args)
        note = "" if c["rows"] >= 10_000_000 else " (fewer than the 10 million of the aim)"
        print(
            f"cone search on {c['rows']:,} products{note}: filled in {c['fill_s']:.0f} s"
            f" (COPY {c['copy_s']:.0f} s, then indexes and ANALYZE); {args.cones} random cones per radius"
        )
        for r in c["radii"]:
            aim = f"   aim: p95 under {CONE_P95_AIM_MS:.0f} ms" if r["label"] == "1 arcmin" else ""
            print(
                f"  radius {r['label']:>8}: p50 {r['p50']:.2f} ms, p95 {r['p95']:.2f} ms, max {r['max']:.2f} ms,"
                f" {r['mean_rows']:.1f} rows on average{aim}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="file.archived events in the burst")
    parser.add_argument("--programs", type=int, default=250, help="programs the burst's files belong to")
    parser.add_argument("--window", type=int, default=500, help="events published concurrently")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the catalog")
    parser.add_argument("--rows", type=int, default=10_000_000, help="products in the cone-search catalog")
    parser.add_argument("--cones", type=int, default=200, help="random cones timed per radius")
    parser.add_argument("--warmup", type=int, default=20, help="cones run first per radius, not timed")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-cones", action="store_true")
    parser.add_argument("--amqp-url", default=AMQP_URL)
    parser.add_argument("--database-url", default=DATABASE_URL)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
