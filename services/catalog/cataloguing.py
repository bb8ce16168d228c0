"""Cataloguing one archived file: record the product or its new version, and decide the dataset events.

For each ``file.archived`` event, inside the consumer's transaction (so the whole of it happens once):

- an archive ID the catalog has never seen becomes a product: ``dataset.new``, preceded by ``dataset.first``
  when it is the first data ever of its program, and followed by ``dataset.public`` when it arrives after
  its release date (then it is public at once);
- a higher version of a known archive ID becomes the current version: ``dataset.repro``, with the software
  version, the reference files and the version it supersedes;
- a version already catalogued (the same checksum) changes nothing; an older version arriving after a newer
  one joins the history silently; the same version with another checksum is refused (dead letter).

A program the catalog does not know is created on the fly, with no PI; its files' own release dates apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Literal

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.catalog.dataset_events import dataset_file, obsets_of, program_event
from services.catalog.sky import check_position, healpix_index
from services.catalog.storage import AnnouncedFile, ProductDescription, ProductStore, Program, ProgramStore
from skyport.db import enqueue
from skyport.events import (
    CloudEvent,
    DatasetFirst,
    DatasetNew,
    DatasetPublic,
    DatasetRepro,
    FileArchived,
    ReproInfo,
)
from skyport.events.models import routing_word

log = structlog.get_logger("skyport.catalog")

_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
_FORMATS = {".fits": "application/fits", ".fits.gz": "application/fits", ".fits.fz": "application/fits"}


class InvalidProduct(ValueError):
    """A file.archived event the catalog cannot record as it stands; the reason says what to fix."""


class Outcome(StrEnum):
    NEW = "new"
    REPRO = "repro"
    LATE_VERSION = "late_version"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Catalogued:
    """What cataloguing one file did, and the events it put in the outbox."""

    outcome: Outcome
    archive_id: str
    version: int
    events: tuple[CloudEvent[Any], ...] = ()


class _Metadata(BaseModel):
    """The metadata an instrument configuration extracts (skyport.instruments.evaluation), as the catalog reads it.

    Unknown keys are ignored; keys the catalog understands must have sensible values.
    """

    model_config = ConfigDict(extra="ignore")

    product: str | None = None
    target_name: str | None = None
    ra_deg: float | None = Field(default=None, allow_inf_nan=False)
    dec_deg: float | None = Field(default=None, ge=-90, le=90, allow_inf_nan=False)
    observed_at: datetime | None = None
    exptime_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    filters: list[str] = Field(default_factory=list)
    intent: Literal["science", "calibration"] = "science"
    release_date: date | None = None
    header: dict[str, Any] = Field(default_factory=dict)
    dataproduct_type: str | None = None
    calib_level: int | None = Field(default=None, ge=0, le=4)
    em_min_m: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    em_max_m: float | None = Field(default=None, gt=0, allow_inf_nan=False)


def calib_level_of(mission: str, level: str, overrides: Mapping[str, int]) -> int | None:
    """The ObsCore calib_level of a mission's level: configured, or the level's leading digit (at least 1).

    Files that reach the archive are FITS, so never ObsCore level 0 (proprietary formats): KECK 0 (raw) and
    JWST 1b are 1, KECK 2 and JWST 2a/2b are 2, JWST 3 is 3.
    """
    configured = overrides.get(f"{mission}/{level}")
    if configured is not None:
        return configured
    if level[:1].isdigit():
        return max(1, min(4, int(level[0])))
    return None


def to_mjd(moment: datetime) -> float:
    return (moment - _MJD_EPOCH).total_seconds() / 86400.0


def access_format(filename: str) -> str:
    lower = filename.lower()
    return next((fmt for suffix, fmt in _FORMATS.items() if lower.endswith(suffix)), "application/octet-stream")


def describe(archived: FileArchived, *, calib_levels: Mapping[str, int] | None = None) -> ProductDescription:
    """The catalog's columns for an archived file; :class:`InvalidProduct` if its metadata make no sense.

    The release date here is the file's own (None if it has none); :func:`release_date_for` decides.
    """
    try:
        meta = _Metadata.model_validate(archived.metadata)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidProduct(f"metadata of {archived.archive_id}: {problems}") from None
    mission = archived.mission.upper()
    for word, what in ((mission, "mission"), (archived.level, "level"), (archived.propid, "program")):
        try:
            routing_word(word)
        except ValueError as exc:
            raise InvalidProduct(f"{what} {word!r} of {archived.archive_id}: {exc}") from None
    if (meta.ra_deg is None) != (meta.dec_deg is None):
        raise InvalidProduct(f"metadata of {archived.archive_id}: ra_deg and dec_deg come together or not at all")
    s_ra = s_dec = None
    healpix = None
    if meta.ra_deg is not None and meta.dec_deg is not None:
        s_ra, s_dec = check_position(meta.ra_deg, meta.dec_deg), meta.dec_deg
        healpix = healpix_index(s_ra, s_dec)
    observed_at = meta.observed_at
    if observed_at is not None and observed_at.tzinfo is None:
        observed_at = observed_at.replace(tzinfo=UTC)  # instrument times are UT
    t_min = to_mjd(observed_at) if observed_at is not None else None
    t_max = t_min + meta.exptime_s / 86400.0 if t_min is not None and meta.exptime_s is not None else t_min
    header = meta.header
    facility = header.get("TELESCOP") if isinstance(header.get("TELESCOP"), str) else None
    return ProductDescription(
        archive_id=archived.archive_id,
        version=archived.version,
        mission=mission,
        propid=archived.propid,
        obset=archived.obset,
        level=archived.level,
        product=meta.product,
        intent=meta.intent,
        original_filename=archived.original_filename,
        release_date=meta.release_date,
        obs_collection=mission,
        obs_id=archived.archive_id,
        dataproduct_type=meta.dataproduct_type,
        calib_level=meta.calib_level
        if meta.calib_level is not None
        else calib_level_of(mission, archived.level, calib_levels or {}),
        target_name=meta.target_name,
        s_ra=s_ra,
        s_dec=s_dec,
        healpix=healpix,
        t_min=t_min,
        t_max=t_max,
        t_exptime=meta.exptime_s,
        em_min=meta.em_min_m,
        em_max=meta.em_max_m,
        instrument_name=archived.instrument,
        facility_name=facility or mission,
        access_format=access_format(archived.original_filename),
        access_estsize=math.ceil(archived.size_bytes / 1024),
        filters=tuple(meta.filters),
        header=header,
        observed_at=observed_at,
        written_at=archived.written_at,
        archived_at=archived.archived_at,
        sha256=archived.sha256,
        size_bytes=archived.size_bytes,
        storage_path=archived.storage_path,
        software_version=archived.software_version,
        reference_files=tuple(archived.reference_files),
        transfer_id=archived.transfer_id,
    )


def release_date_for(product: ProductDescription, program: Program) -> date:
    """The program's own exclusive-access period when an administrator set one, else the file's release date.

    :class:`InvalidProduct` when there is neither: data are never catalogued without knowing when they go public.
    """
    if program.exclusive_access_months is None or product.observed_at is None:
        if product.release_date is None:
            raise InvalidProduct(
                f"metadata of {product.archive_id}: no release_date, and program {product.mission}/{product.propid} "
                "has no exclusive-access period of its own"
            )
        return product.release_date
    # Imported here: skyport.instruments loads astropy, which only this rarely taken branch needs.
    from skyport.instruments import ReleaseRule

    return ReleaseRule(exclusive_access_months=program.exclusive_access_months).release_date(product.observed_at.date())


class CatalogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.catalogued = Counter(
            "skyport_catalog_files_total",
            "file.archived events catalogued, by outcome (new, repro, late_version, duplicate).",
            ("outcome",),
            registry=registry,
        )
        self.dataset_events = Counter(
            "skyport_catalog_dataset_events_total",
            "Dataset events put in the outbox, by type.",
            ("type",),
            registry=registry,
        )
        self.end_to_end = Histogram(
            "skyport_catalog_end_to_end_seconds",
            "From the file's write time at the observatory to its catalog entry.",
            registry=registry,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 6 * 3600, 24 * 3600),
        )


def _today() -> date:
    return datetime.now(UTC).date()


class Cataloguer:
    """Catalogues file.archived events; one per process, used by the consumer for every message."""

    def __init__(
        self,
        public_url: str,
        *,
        calib_levels: Mapping[str, int] | None = None,
        metrics: CatalogMetrics | None = None,
        today: Callable[[], date] = _today,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.calib_levels = dict(calib_levels or {})
        self.metrics = metrics
        self.today = today

    async def catalogue(
        self, conn: asyncpg.Connection, archived: FileArchived, correlation_id: str | None = None
    ) -> Catalogued:
        """Record one archived file in the caller's transaction and enqueue its dataset events."""
        described = describe(archived, calib_levels=self.calib_levels)
        products = ProductStore(conn)
        await products.lock_archive_id(described.archive_id)
        known = await products.known_versions(described.archive_id, described.version)
        if known.sha256_of_version is not None:
            if known.sha256_of_version != described.sha256:
                raise InvalidProduct(
                    f"{described.archive_id} version {described.version} is catalogued with sha256 "
                    f"{known.sha256_of_version}, this event says {described.sha256}"
                )
            log.info("version already catalogued", archive_id=described.archive_id, version=described.version)
            return self._done(Catalogued(Outcome.DUPLICATE, described.archive_id, described.version), archived)

        program = await ProgramStore(conn).ensure(described.mission, described.propid)
        described = _with_release_date(described, release_date_for(described, program))
        if known.current_version is None:
            result = await self._new_product(conn, described, program, correlation_id)
        elif described.version > known.current_version:
            result = await self._new_version(conn, described, known.current_version, correlation_id)
        else:
            await products.add_version(described, supersedes_version=None)
            log.info(
                "older version catalogued after a newer one",
                archive_id=described.archive_id,
                version=described.version,
                current_version=known.current_version,
            )
            result = Catalogued(Outcome.LATE_VERSION, described.archive_id, described.version)
        return self._done(result, archived)

    async def _new_product(
        self, conn: asyncpg.Connection, described: ProductDescription, program: Program, correlation_id: str | None
    ) -> Catalogued:
        products = ProductStore(conn)
        # A program known to have data needs no claim (the usual case: one round trip fewer).
        first = program.first_data_at is None and await ProgramStore(conn).claim_first_data(
            described.mission, described.propid
        )
        assert described.release_date is not None  # set by release_date_for
        public = described.release_date <= self.today()
        await products.add_version(described, supersedes_version=None)
        files = [dataset_file(self.public_url, _announced(described))]
        common: dict[str, Any] = {
            "mission": described.mission,
            "propid": described.propid,
            "level": described.level,
            "obsets": obsets_of([_announced(described)]),
            "files": files,
        }
        events: list[CloudEvent[Any]] = []
        if first:
            events.append(program_event(DatasetFirst(**common), correlation_id))
        events.append(program_event(DatasetNew(**common), correlation_id))
        if public:
            events.append(program_event(DatasetPublic(**common), correlation_id))
        for event in events:
            await enqueue(conn, event)
        # Last, so that the catalog-order lock is held for as short a time as possible (see storage.py).
        await products.lock_catalog_order()
        await products.insert(described, public=public)
        log.info(
            "product catalogued",
            archive_id=described.archive_id,
            version=described.version,
            mission=described.mission,
            propid=described.propid,
            first=first,
            public=public,
        )
        return Catalogued(Outcome.NEW, described.archive_id, described.version, tuple(events))

    async def _new_version(
        self, conn: asyncpg.Connection, described: ProductDescription, superseded: int, correlation_id: str | None
    ) -> Catalogued:
        products = ProductStore(conn)
        await products.add_version(described, supersedes_version=superseded)
        event = program_event(
            DatasetRepro(
                mission=described.mission,
                propid=described.propid,
                level=described.level,
                obsets=obsets_of([_announced(described)]),
                files=[dataset_file(self.public_url, _announced(described))],
                repro=ReproInfo(
                    software_version=described.software_version,
                    reference_files=list(described.reference_files),
                    supersedes_version=superseded,
                ),
            ),
            correlation_id,
        )
        await enqueue(conn, event)
        await products.lock_catalog_order()
        await products.update_to(described)
        log.info(
            "new version catalogued", archive_id=described.archive_id, version=described.version, supersedes=superseded
        )
        return Catalogued(Outcome.REPRO, described.archive_id, described.version, (event,))

    def _done(self, result: Catalogued, archived: FileArchived) -> Catalogued:
        if self.metrics is not None:
            self.metrics.catalogued.labels(result.outcome.value).inc()
            for event in result.events:
                self.metrics.dataset_events.labels(event.data.type).inc()
            if archived.written_at is not None and result.outcome in (Outcome.NEW, Outcome.REPRO):
                self.metrics.end_to_end.observe((datetime.now(UTC) - archived.written_at).total_seconds())
        return result


def _announced(described: ProductDescription) -> AnnouncedFile:
    return AnnouncedFile(
        archive_id=described.archive_id,
        version=described.version,
        mission=described.mission,
        propid=described.propid,
        level=described.level,
        obset=described.obset,
        original_filename=described.original_filename,
        sha256=described.sha256,
        size_bytes=described.size_bytes,
    )


def _with_release_date(described: ProductDescription, release_date: date) -> ProductDescription:
    return described if release_date == described.release_date else replace(described, release_date=release_date)
