"""The scrubber on the real PostgreSQL: an archived file whose bytes changed in storage is found and reported."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.ingestor.app import service as ingestor_service
from services.ingestor.archive import ArchiveFiles
from services.ingestor.handlers.events import on_transfer_received
from services.ingestor.ingest import Ingestor
from services.ingestor.scrubber import Scrubber, ScrubMetrics
from services.ingestor.storage import PostgresIngestorDatabase, PostgresScrubRecords
from services.monitor.dep import evaluate
from skyport.db import LIBRARY_MIGRATIONS, Database, Migrator
from skyport.events import CloudEvent, TransferReceived
from skyport.instruments import load_instruments
from skyport.simulator import Simulator
from tests.support.flow import INSTRUMENTS
from tests.support.servers import DATABASE_URL


@pytest.fixture
async def db(unique: str) -> AsyncIterator[Database]:
    schema = f"scrub_{unique}"
    assert ingestor_service.migrations is not None
    db = await Database.connect(DATABASE_URL, schema, min_size=1, max_size=4)
    async with db.pool.acquire() as conn:
        await Migrator(schema, {"skyport": LIBRARY_MIGRATIONS, "ingestor": ingestor_service.migrations}).apply(conn)
    try:
        yield db
    finally:
        await db.close()
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


async def archive_files(tmp_path: Path, db: Database, count: int) -> ArchiveFiles:
    """``count`` HIRES files through the real ingestor into archive storage under ``tmp_path``."""
    instruments = load_instruments(INSTRUMENTS)
    root, staging = tmp_path / "observatory", tmp_path / "staging"
    storage = ArchiveFiles(tmp_path / "archive")
    ingestor = Ingestor(staging, storage, instruments)
    staging.mkdir(parents=True)
    for seed in range(count):
        relative = Simulator(instruments, root, seed=seed).write_file("HIRES", size_bytes=200_000).relative_path
        path = root / relative
        manifest = evaluate(instruments, root, relative, path.stat().st_size, shared=False)
        transfer_id = str(uuid.uuid4())
        (staging / transfer_id).write_bytes(path.read_bytes())
        received = TransferReceived(
            transfer_id=transfer_id,
            site="test",
            staged_path=transfer_id,
            **manifest.model_dump(include={"archive_id", "mission", "instrument", "level", "propid", "obset"}),
            original_filename=manifest.original_filename,
            size_bytes=manifest.size_bytes,
            sha256=manifest.sha256,
            metadata=manifest.metadata,
            written_at=manifest.written_at,
        )
        async with PostgresIngestorDatabase(db).transaction() as unit:
            await on_transfer_received(ingestor)(unit, CloudEvent.create(received, source="/test"))
    return storage


def scrubber(db: Database, storage: ArchiveFiles, metrics: ScrubMetrics, interval: float = 0) -> Scrubber:
    return Scrubber(PostgresScrubRecords(db), storage, metrics, rate=1e9, interval=interval)


async def test_a_byte_flipped_in_archive_storage_is_found_and_reported(tmp_path: Path, db: Database) -> None:
    storage = await archive_files(tmp_path, db, 2)
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


async def test_a_missing_file_is_reported_and_a_scrubbed_file_waits_its_interval(tmp_path: Path, db: Database) -> None:
    storage = await archive_files(tmp_path, db, 1)
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
