"""The ingestor on the real PostgreSQL, in-process: a schema of the test's own, and an observatory folder whose files
are evaluated as the monitor does and handed to the ingestor as the receiver would."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.ingestor.app import service as ingestor_service
from services.ingestor.archive import ArchiveFiles
from services.ingestor.handlers.events import on_transfer_received
from services.ingestor.ingest import Ingestor
from services.ingestor.storage import PostgresIngestorDatabase
from services.monitor.dep import evaluate
from skyport.db import Database
from skyport.events import CloudEvent, ReplacedContent
from skyport.instruments import InstrumentCatalog, load_instruments
from skyport.transfer import Manifest
from tests.support.flow import INSTRUMENTS
from tests.support.schemas import migrated_schema
from tests.support.servers import DATABASE_URL
from tests.support.transfers import transfer_received


@pytest.fixture
async def db(unique: str) -> AsyncIterator[Database]:
    assert ingestor_service.migrations is not None
    async with migrated_schema(DATABASE_URL, f"ingestor_{unique}", {"ingestor": ingestor_service.migrations}) as db:
        yield db


class Site:
    """An observatory folder whose files are evaluated as the monitor does, and handed to the ingestor."""

    def __init__(self, tmp_path: Path, instruments: InstrumentCatalog, db: Database) -> None:
        self.root, self.staging = tmp_path / "observatory", tmp_path / "staging"
        self.instruments, self.db = instruments, db
        self.storage = ArchiveFiles(tmp_path / "archive")
        self.ingestor = Ingestor(self.staging, self.storage, instruments)

    def manifest(self, relative: str, replaces: Sequence[Manifest] = ()) -> tuple[Manifest, bytes]:
        path = self.root / relative
        manifest = evaluate(self.instruments, self.root, relative, path.stat().st_size, shared=False)
        earlier = [ReplacedContent(sha256=m.sha256, size_bytes=m.size_bytes) for m in replaces]
        return manifest.model_copy(update={"replaces": earlier}), path.read_bytes()

    async def ingest(self, manifest: Manifest, content: bytes) -> None:
        transfer_id = str(uuid.uuid4())
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.staging / transfer_id).write_bytes(content)
        received = transfer_received(manifest, transfer_id, transfer_id, site="test")
        async with PostgresIngestorDatabase(self.db).transaction() as unit:
            await on_transfer_received(self.ingestor)(unit, CloudEvent.create(received, source="/test"))

    async def archived(self) -> list[tuple[int, str]]:
        rows = await self.db.pool.fetch("SELECT version, sha256 FROM archived_files ORDER BY version")
        return [(row["version"], row["sha256"]) for row in rows]

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        rows = await self.db.pool.fetch("SELECT body FROM outbox WHERE event_type = $1 ORDER BY id", event_type)
        return [json.loads(row["body"])["data"] for row in rows]


@pytest.fixture
def site(tmp_path: Path, db: Database) -> Site:
    return Site(tmp_path, load_instruments(INSTRUMENTS), db)
