"""Test helpers for the catalog: file.archived events as the ingestor writes them, and a catalog on a test schema."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

from services.catalog.app import file_archived_subscription
from services.catalog.app import service as catalog_service
from services.catalog.cataloguing import Cataloguer
from services.catalog.settings import CatalogSettings
from skyport.bus import Bus, Subscription
from skyport.db import Database, OutboxRelay
from skyport.events import CloudEvent, FileArchived
from tests.support.schemas import migrated_schema

PUBLIC_URL = "https://archive.test"
FAR_FUTURE = date(2099, 1, 1)
OBSERVED_AT = datetime(2026, 3, 15, 8, 12, 3, tzinfo=UTC)


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def archived(
    archive_id: str,
    *,
    propid: str,
    mission: str = "KECK",
    instrument: str = "HIRES",
    level: str = "0",
    version: int = 1,
    obset: str | None = None,
    release_date: date | None = FAR_FUTURE,
    ra: float | None = 150.25,
    dec: float | None = 2.5,
    sha256: str | None = None,
    software_version: str | None = None,
    reference_files: Iterable[str] = (),
    metadata: dict[str, Any] | None = None,
) -> FileArchived:
    """A file.archived payload with the metadata an instrument configuration extracts."""
    filename = f"{archive_id.lower()}.fits"
    meta: dict[str, Any] = {
        "product": "raw",
        "target_name": "HD 189733",
        "ra_deg": ra,
        "dec_deg": dec,
        "observed_at": OBSERVED_AT.isoformat().replace("+00:00", "Z"),
        "exptime_s": 600.0,
        "filters": ["kv389"],
        "intent": "science",
        "header": {"FRAMENO": 12, "DECKNAME": "C2", "AIRMASS": 1.12},
    }
    if release_date is not None:
        meta["release_date"] = release_date.isoformat()
    meta.update(metadata or {})
    return FileArchived(
        archive_id=archive_id,
        version=version,
        mission=mission,
        instrument=instrument,
        level=level,
        propid=propid,
        obset=obset,
        original_filename=filename,
        storage_path=f"{mission.lower()}/{instrument.lower()}/2026-03-15/{archive_id}/v{version}/{filename}",
        size_bytes=2_000_000 + version,
        sha256=sha256 or sha256_of(f"{archive_id}/{version}"),
        archived_at=datetime.now(UTC),
        written_at=OBSERVED_AT,
        metadata=meta,
        software_version=software_version,
        reference_files=list(reference_files),
        transfer_id=f"t-{archive_id}-{version}",
    )


def event_of(data: FileArchived) -> CloudEvent[FileArchived]:
    return CloudEvent.create(data, source="/skyport/ingestor", correlation_id=f"c-{data.archive_id}-{data.version}")


@asynccontextmanager
async def catalog_database(database_url: str, schema: str) -> AsyncIterator[Database]:
    """A pool on a fresh schema with the catalog's migrations, dropped afterwards."""
    assert catalog_service.migrations is not None
    async with migrated_schema(database_url, schema, {"catalog": catalog_service.migrations}, max_size=10) as db:
        yield db


class Received:
    """Collects the events a subscription delivers (duplicates included)."""

    def __init__(self) -> None:
        self.events: list[CloudEvent[Any]] = []

    async def __call__(self, event: CloudEvent[Any]) -> None:
        self.events.append(event)

    @property
    def ids(self) -> Counter[str]:
        return Counter(e.id for e in self.events)

    def unique(self) -> list[CloudEvent[Any]]:
        """The events once each, in order of first arrival: what an idempotent consumer acts on."""
        seen: dict[str, CloudEvent[Any]] = {}
        for event in self.events:
            seen.setdefault(event.id, event)
        return list(seen.values())

    def of_type(self, event_type: str) -> list[CloudEvent[Any]]:
        return [e for e in self.unique() if e.type == event_type]


class CatalogInProcess:
    """The catalog's consumer and outbox relay in this process, on a test schema and test routing keys.

    File events are published on ``test.<unique>.file.archived`` so that no other test's queue sees them;
    the catalog's events go out on their real routing keys and ``listen`` binds to the test's programs. The
    consumer is wired as the service wires it (:func:`services.catalog.app.file_archived_subscription`), with
    the batching of ``settings``.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        unique: str,
        cataloguer: Cataloguer | None = None,
        settings: CatalogSettings | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.unique = unique
        self.cataloguer = cataloguer or Cataloguer(PUBLIC_URL)
        self.settings = settings or CatalogSettings(catalog_public_url=PUBLIC_URL)
        self.file_key = f"test.{unique}.file.archived"
        self.received = Received()
        self._relay: asyncio.Task[None] | None = None

    async def start(self, *, relay: bool = True) -> None:
        await self.bus.subscribe(
            file_archived_subscription(
                self.db, self.cataloguer, self.settings, queue=f"test.{self.unique}.catalog", bindings=(self.file_key,)
            )
        )
        if relay:
            self.start_relay()

    def start_relay(self, relay: OutboxRelay | None = None) -> asyncio.Task[None]:
        self._relay = asyncio.create_task((relay or OutboxRelay(self.db, self.bus, poll_interval=0.2)).run())
        return self._relay

    async def stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
            self._relay = None

    async def listen(self, *propids: str, families: Iterable[str] = ("dataset", "access")) -> Received:
        """Receive the catalog's dataset and access events of these programs (any mission and level)."""
        bindings = []
        for propid in propids:
            for family in families:
                middle = "*.*.*" if family == "dataset" else "*.*"
                bindings.append(f"{family}.{middle}.{propid.lower()}")
        await self.bus.subscribe(Subscription(f"test.{self.unique}.listener", tuple(bindings), self.received))
        return self.received

    async def publish(self, data: FileArchived | CloudEvent[FileArchived]) -> CloudEvent[FileArchived]:
        event = data if isinstance(data, CloudEvent) else event_of(data)
        await self.bus.publish(event, routing_key=self.file_key)
        return event

    async def handled(self) -> int:
        return int(await self.db.pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer = 'catalog'"))

    async def unsent(self) -> int:
        return int(await self.db.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))

    async def outbox_ids(self) -> set[str]:
        return {r["event_id"] for r in await self.db.pool.fetch("SELECT event_id FROM outbox")}

    async def close(self) -> None:
        await self.stop_relay()
