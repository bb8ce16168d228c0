"""Cataloguing archived files: record each product or its new version, and decide the dataset events.

For each ``file.archived`` event, inside the consumer's transaction (so the whole of it happens once):

- an archive ID the catalog has never seen becomes a product: ``dataset.new``, preceded by ``dataset.first``
  when it is the first data ever of its program, and followed by ``dataset.public`` when it arrives after
  its release date (then it is public at once);
- a higher version of a known archive ID becomes the current version: ``dataset.repro``, with the software
  version, the reference files and the version it supersedes;
- a version already catalogued (the same checksum) changes nothing; an older version arriving after a newer
  one joins the history silently; the same version with another checksum is refused (dead letter), unless
  the event ``replaces`` content: a partial file the monitor took too early, replaced in the archive by the
  complete file. Then the version is updated in place (checksum, size, metadata) and ``dataset.new`` is sent
  again for the same version with the new checksum: whoever took the partial file takes the complete one (it is
  not a reprocessing, so not ``dataset.repro``). The ingestor decided the replacement under its lock, so the
  catalog goes by the archive's time, not by the checksum replaced: a file replaced twice may have its two
  replacements catalogued in either order (concurrent batches), and the older one, arriving last, changes
  nothing (``superseded``).

A program the catalog does not know is created on the fly, with no PI; its files' own release dates apply.

The consumer catalogues a batch of events per transaction (:meth:`Cataloguer.catalogue_batch`), with one query
per step for the whole batch, which is what lets one catalog process keep up with thousands of files a
second. The outcome is the same as cataloguing the batch's files one after another in order of archive ID and
version: a version 2 arriving with its version 1 is a ``repro`` of it.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.catalog.dataset_events import dataset_file, obsets_of, program_event
from services.catalog.sky import check_position, healpix_index
from services.catalog.storage.products import (
    AnnouncedFile,
    KnownVersions,
    NewProduct,
    ProductDescription,
    ProductStore,
)
from services.catalog.storage.programs import Program, ProgramStore
from skyport.db import enqueue_many
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
from skyport.nights import Nights

log = structlog.get_logger("skyport.catalog")

_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
_DEFAULT_NIGHTS = Nights()
_FORMATS = {".fits": "application/fits", ".fits.gz": "application/fits", ".fits.fz": "application/fits"}


class InvalidProduct(ValueError):
    """A file.archived event the catalog cannot record as it stands; the reason says what to fix."""


class CatalogueOutcome(StrEnum):
    NEW = "new"
    REPRO = "repro"
    LATE_VERSION = "late_version"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Catalogued:
    """What cataloguing one file did, and the events it put in the outbox."""

    outcome: CatalogueOutcome
    archive_id: str
    version: int
    events: tuple[CloudEvent[Any], ...] = ()


def calib_level_of(mission: str, level: str, overrides: Mapping[str, int]) -> int | None:
    """The ObsCore calib_level of a mission's level: configured, or the level's leading digit (at least 1).

    For events from before DEP sent the product's own ``calib_level`` (the instrument configuration's).

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


def describe(
    archived: FileArchived, *, calib_levels: Mapping[str, int] | None = None, nights: Nights | None = None
) -> ProductDescription:
    """The catalog's columns for an archived file; :class:`InvalidProduct` if its metadata make no sense.

    The release date here is the file's own (None if it has none); :func:`effective_release_date` decides. The night is
    that of the observation at the mission's site (``nights``; the default rule for a mission it does not know).
    """
    meta = archived.metadata  # typed and checked when the event was parsed (HeaderMetadata)
    mission = archived.mission.upper()
    for word, what in ((mission, "mission"), (archived.level, "level"), (archived.propid, "program")):
        try:
            routing_word(word)
        except ValueError as exc:
            raise InvalidProduct(f"{what} {word!r} of {archived.archive_id}: {exc}") from None
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
    telescope = header.get("TELESCOP")
    facility = telescope if isinstance(telescope, str) else None
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
        calib_level=_calib_level(meta.calib_level, mission, archived.level, calib_levels or {}),
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
        night=(nights or _DEFAULT_NIGHTS).night_of(mission, observed_at),
        written_at=archived.written_at,
        archived_at=archived.archived_at,
        sha256=archived.sha256,
        size_bytes=archived.size_bytes,
        storage_path=archived.storage_path,
        software_version=archived.software_version or meta.software_version,
        reference_files=tuple(archived.reference_files or meta.reference_files),
        transfer_id=archived.transfer_id,
    )


def _calib_level(sent: int | None, mission: str, level: str, overrides: Mapping[str, int]) -> int | None:
    """The catalog's configured calib_level of a mission's level first, then DEP's, then the level's digit."""
    if f"{mission}/{level}" in overrides or sent is None:
        return calib_level_of(mission, level, overrides)
    return sent


def effective_release_date(product: ProductDescription, program: Program) -> date:
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
        nights: Nights | None = None,
        metrics: CatalogMetrics | None = None,
        today: Callable[[], date] = _today,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.calib_levels = dict(calib_levels or {})
        self.nights = nights or _DEFAULT_NIGHTS
        self.metrics = metrics
        self.today = today

    async def catalogue(
        self, conn: asyncpg.Connection, archived: FileArchived, correlation_id: str | None = None
    ) -> Catalogued:
        """Record one archived file in the caller's transaction and enqueue its dataset events."""
        (result,) = await self.catalogue_batch(conn, [(archived, correlation_id)])
        return result

    async def catalogue_batch(
        self, conn: asyncpg.Connection, files: Sequence[tuple[FileArchived, str | None]]
    ) -> list[Catalogued]:
        """Record archived files (each with its correlation id) in the caller's transaction, with their events.

        The same as cataloguing them one after another in order of archive ID and version (so that a version 2
        arriving with its version 1 is a ``repro`` of it), with one query per step for the whole batch.
        :class:`InvalidProduct` if any file is refused: the caller rolls back, and catalogues the files one by
        one to find out which. Returns what became of each file, in that order.
        """
        steps = [
            _Step(describe(archived, calib_levels=self.calib_levels, nights=self.nights), archived, cid)
            for archived, cid in files
        ]
        steps.sort(key=lambda step: (step.described.archive_id, step.described.version))
        products = ProductStore(conn)
        await products.lock_archive_ids({step.described.archive_id for step in steps})
        _decide(steps, await products.known_versions({(s.described.archive_id, s.described.version) for s in steps}))
        recorded = [
            step for step in steps if step.outcome not in (CatalogueOutcome.DUPLICATE, CatalogueOutcome.SUPERSEDED)
        ]
        if recorded:
            await self._record(conn, recorded)
        results = [self._done(step) for step in steps]
        # One line per batch: a line per file, at thousands of files a second, is a volume of logs (and a share
        # of the CPU) out of proportion. Each file's line is there at DEBUG; late versions and duplicates, rare
        # and worth a look, stay at INFO.
        outcomes = collections.Counter(result.outcome.value for result in results)
        log.info("files catalogued", files=len(results), **outcomes, dataset_events=sum(len(r.events) for r in results))
        if log.is_enabled_for(logging.DEBUG):
            for step in steps:
                if step.outcome in (CatalogueOutcome.NEW, CatalogueOutcome.REPRO):
                    self._log(step, log.debug)
        return results

    async def _record(self, conn: asyncpg.Connection, steps: list[_Step]) -> None:
        """Write the versions, products rows and events of the files that are not duplicates."""
        products, programs = ProductStore(conn), ProgramStore(conn)
        known_programs = await programs.ensure({step.program for step in steps})
        for step in steps:
            step.described = _with_release_date(
                step.described, effective_release_date(step.described, known_programs[step.program])
            )
        # A program known to have data needs no claim (the usual case: one round trip fewer).
        unclaimed = {
            step.program
            for step in steps
            if step.outcome is CatalogueOutcome.NEW and known_programs[step.program].first_data_at is None
        }
        firsts = await programs.claim_first_data(unclaimed) if unclaimed else set()
        await products.add_versions(
            [(s.described, s.supersedes) for s in steps if s.outcome is not CatalogueOutcome.REPLACED]
        )
        # After the insertions: a partial file and its replacement can come in one batch. The last content wins.
        await products.replace_versions(
            list(
                {
                    (s.described.archive_id, s.described.version): s.described
                    for s in steps
                    if s.outcome is CatalogueOutcome.REPLACED
                }.values()
            )
        )

        today = self.today()
        new: dict[str, NewProduct] = {}
        newer: dict[str, ProductDescription] = {}
        for step in steps:
            described = step.described
            assert described.release_date is not None  # set by effective_release_date
            if step.outcome is CatalogueOutcome.NEW:
                step.public = described.release_date <= today
                step.first = step.program in firsts
                firsts.discard(step.program)  # one dataset.first per program, with its first file
                step.events = self._new_product_events(step)
                new[described.archive_id] = NewProduct(described, step.public, described.archived_at)
            elif step.outcome is CatalogueOutcome.REPRO:
                step.events = (self._repro_event(step),)
                inserted = new.get(described.archive_id)
                if inserted is None:
                    newer[described.archive_id] = described
                else:  # its first version came in this batch: one products row, describing the newest version
                    release_date = inserted.current.release_date if inserted.public else described.release_date
                    new[described.archive_id] = replace(inserted, current=replace(described, release_date=release_date))
            elif step.outcome is CatalogueOutcome.REPLACED:
                step.events = self._new_product_events(step)  # not first, not public: what it was already
                inserted = new.get(described.archive_id)
                if inserted is not None and inserted.current.version == described.version:
                    new[described.archive_id] = replace(
                        inserted, current=replace(described, release_date=inserted.current.release_date)
                    )
                elif step.current_version == described.version:
                    newer[described.archive_id] = described
        await enqueue_many(conn, [event for step in steps for event in step.events])
        if new or newer:
            # Last, so that the catalog-order lock is held for as short a time as possible (see storage/products.py).
            await products.lock_catalog_order()
            await products.insert(list(new.values()))
            await products.update_to(list(newer.values()))

    def _new_product_events(self, step: _Step) -> tuple[CloudEvent[Any], ...]:
        announced = _announced(step.described)
        common: dict[str, Any] = {
            "mission": announced.mission,
            "propid": announced.propid,
            "level": announced.level,
            "obsets": obsets_of([announced]),
            "files": [dataset_file(self.public_url, announced)],
        }
        events: list[CloudEvent[Any]] = []
        if step.first:
            events.append(program_event(DatasetFirst(**common), step.correlation_id))
        events.append(program_event(DatasetNew(**common), step.correlation_id))
        if step.public:
            events.append(program_event(DatasetPublic(**common), step.correlation_id))
        return tuple(events)

    def _repro_event(self, step: _Step) -> CloudEvent[DatasetRepro]:
        described = step.described
        announced = _announced(described)
        return program_event(
            DatasetRepro(
                mission=described.mission,
                propid=described.propid,
                level=described.level,
                obsets=obsets_of([announced]),
                files=[dataset_file(self.public_url, announced)],
                repro=ReproInfo(
                    software_version=described.software_version,
                    reference_files=list(described.reference_files),
                    supersedes_version=step.supersedes,
                ),
            ),
            step.correlation_id,
        )

    def _done(self, step: _Step) -> Catalogued:
        if step.outcome in (
            CatalogueOutcome.LATE_VERSION,
            CatalogueOutcome.DUPLICATE,
            CatalogueOutcome.REPLACED,
            CatalogueOutcome.SUPERSEDED,
        ):
            self._log(step, log.info)
        result = Catalogued(step.outcome, step.described.archive_id, step.described.version, step.events)
        if self.metrics is not None:
            self.metrics.catalogued.labels(result.outcome.value).inc()
            for event in result.events:
                self.metrics.dataset_events.labels(event.data.type).inc()
            written_at = step.archived.written_at
            if written_at is not None and result.outcome in (CatalogueOutcome.NEW, CatalogueOutcome.REPRO):
                self.metrics.end_to_end.observe((datetime.now(UTC) - written_at).total_seconds())
        return result

    @staticmethod
    def _log(step: _Step, method: Callable[..., Any]) -> None:
        described = step.described
        fields: dict[str, Any] = {"archive_id": described.archive_id, "version": described.version}
        if step.correlation_id is not None:
            fields["correlation_id"] = step.correlation_id
        if step.outcome is CatalogueOutcome.NEW:
            method(
                "product catalogued",
                **fields,
                mission=described.mission,
                propid=described.propid,
                first=step.first,
                public=step.public,
            )
        elif step.outcome is CatalogueOutcome.REPRO:
            method("new version catalogued", **fields, supersedes=step.supersedes)
        elif step.outcome is CatalogueOutcome.LATE_VERSION:
            method("older version catalogued after a newer one", **fields, current_version=step.current_version)
        elif step.outcome is CatalogueOutcome.REPLACED:
            method("partial file replaced by the complete one", **fields, sha256=described.sha256)
        elif step.outcome is CatalogueOutcome.SUPERSEDED:
            method("replacement older than the content catalogued, ignored", **fields, sha256=described.sha256)
        else:
            method("version already catalogued", **fields)


@dataclass
class _Step:
    """One file of a batch on its way through :meth:`Cataloguer.catalogue_batch`."""

    described: ProductDescription
    archived: FileArchived
    correlation_id: str | None
    outcome: CatalogueOutcome = CatalogueOutcome.NEW
    supersedes: int | None = None
    """For a repro: the version it supersedes."""
    current_version: int | None = None
    """For a late version: the newer version that stays current; for a replaced one: the current version."""
    first: bool = False
    public: bool = False
    events: tuple[CloudEvent[Any], ...] = ()

    @property
    def program(self) -> tuple[str, str]:
        return self.described.mission, self.described.propid


def _decide(steps: Sequence[_Step], known: KnownVersions) -> None:
    """Set each step's outcome, as if the files (in order of archive ID and version) came one after another.

    :class:`InvalidProduct` for a version catalogued (before, or earlier in the batch) with another checksum,
    unless the event replaces content (a partial file replaced by the complete one): then the newest content wins.
    """
    current = dict(known.current_version)
    checksums = dict(known.sha256)
    stamps = dict(known.archived_at)
    for step in steps:
        described = step.described
        key = (described.archive_id, described.version)
        catalogued = checksums.get(key)
        if catalogued is not None and catalogued != described.sha256 and step.archived.replaces is not None:
            if described.archived_at <= stamps[key]:
                step.outcome = CatalogueOutcome.SUPERSEDED
                continue
            checksums[key], stamps[key] = described.sha256, described.archived_at
            step.outcome, step.current_version = CatalogueOutcome.REPLACED, current.get(described.archive_id)
            continue
        if catalogued is not None:
            if catalogued != described.sha256:
                raise InvalidProduct(
                    f"{described.archive_id} version {described.version} is catalogued with sha256 "
                    f"{catalogued}, this event says {described.sha256}"
                )
            step.outcome = CatalogueOutcome.DUPLICATE
            continue
        checksums[key], stamps[key] = described.sha256, described.archived_at
        version = current.get(described.archive_id)
        if version is None:
            step.outcome = CatalogueOutcome.NEW
        elif described.version > version:
            step.outcome, step.supersedes = CatalogueOutcome.REPRO, version
        else:
            step.outcome, step.current_version = CatalogueOutcome.LATE_VERSION, version
            continue
        current[described.archive_id] = described.version


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
