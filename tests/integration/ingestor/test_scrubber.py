"""The scrubber on the real PostgreSQL: an archived file whose bytes changed in storage is found and reported."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.ingestor.archive import ArchiveFiles
from services.ingestor.scrubber import Scrubber, ScrubMetrics
from services.ingestor.storage import PostgresScrubRecords
from skyport.db import Database
from skyport.simulator import Simulator
from tests.integration.ingestor.conftest import Site


async def archive_files(site: Site, count: int) -> ArchiveFiles:
    """``count`` HIRES files through the real ingestor into archive storage."""
    for seed in range(count):
        relative = Simulator(site.instruments, site.root, seed=seed).write_file("HIRES", size_bytes=200_000)
        await site.ingest(*site.manifest(relative.relative_path))
    return site.storage


def scrubber(db: Database, storage: ArchiveFiles, metrics: ScrubMetrics, interval: float = 0) -> Scrubber:
    return Scrubber(PostgresScrubRecords(db), storage, metrics, rate=1e9, interval=interval)


async def test_a_byte_flipped_in_archive_storage_is_found_and_reported(site: Site, db: Database) -> None:
    storage = await archive_files(site, 2)
    stored = sorted(p for p in storage.root.rglob("*") if p.is_file())
    damaged = stored[0]
    with damaged.open("r+b") as handle:  # one bit of the data gone bad, the size unchanged
        handle.seek(100_000)
        byte = handle.read(1)
        handle.seek(100_000)
        handle.write(bytes([byte[0] ^ 0x01]))
    registry = CollectorRegistry()
    metrics = ScrubMetrics(registry)

    with capture_logs() as logs:
        looked_at = await scrubber(db, storage, metrics).scrub_due()

    assert looked_at == 2
    findings = await db.pool.fetch("SELECT * FROM scrub_findings")
    assert len(findings) == 1
    (finding,) = findings
    relative = damaged.relative_to(storage.root).as_posix()
    assert finding["storage_path"] == relative
    assert finding["found_size"] == finding["expected_size"]
    assert finding["found_sha256"] != finding["expected_sha256"]
    assert relative in finding["problem"]
    assert registry.get_sample_value("skyport_scrub_failures_total", {"kind": "changed"}) == 1
    assert registry.get_sample_value("skyport_scrub_files_total") == 2
    errors = [line for line in logs if line["log_level"] == "error"]
    assert [(e["event"], e["archive_id"], e["kind"]) for e in errors] == [
        ("archived file failed its scrub", finding["archive_id"], "changed")
    ]


async def test_a_missing_file_is_reported_and_a_scrubbed_file_waits_its_interval(site: Site, db: Database) -> None:
    storage = await archive_files(site, 1)
    registry = CollectorRegistry()
    metrics = ScrubMetrics(registry)
    assert await scrubber(db, storage, metrics, interval=3600).scrub_due() == 0  # archived just now: proven

    assert await scrubber(db, storage, metrics).scrub_due() == 1
    assert await db.pool.fetchval("SELECT count(*) FROM scrub_findings") == 0
    assert await scrubber(db, storage, metrics, interval=3600).scrub_due() == 0  # scrubbed just now

    (stored,) = [p for p in storage.root.rglob("*") if p.is_file()]
    stored.unlink()
    assert await scrubber(db, storage, metrics).scrub_due() == 1
    assert await db.pool.fetchval("SELECT problem FROM scrub_findings") == (
        f"{stored.relative_to(storage.root).as_posix()} is not in archive storage"
    )
    assert registry.get_sample_value("skyport_scrub_failures_total", {"kind": "missing"}) == 1
