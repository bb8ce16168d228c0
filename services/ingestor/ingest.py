"""Ingesting one staged file: verify it, detect re-ingestion, store it as a version, and say so."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.ingestor.archive import ArchiveFiles, safe_relative
from services.ingestor.storage import ArchivedVersion
from skyport.bus import BatchHandler, Handler
from skyport.events import (
    CloudEvent,
    FileArchived,
    IngestCompleted,
    IngestFailed,
    ReplacedContent,
    TransferReceived,
)
from skyport.fits import InvalidFile, read_header, sha256_file
from skyport.instruments import InstrumentCatalog

SOURCE = "/skyport/ingestor"

log = structlog.get_logger("skyport.ingestor")


class VersionRecords(Protocol):
    """The archived versions of each archive ID, and the content complete files replaced."""

    async def lock(self, archive_id: str) -> None: ...

    async def versions(self, archive_id: str) -> list[ArchivedVersion]: ...

    async def superseded(self, archive_id: str) -> dict[str, int]: ...

    async def add(
        self,
        *,
        archive_id: str,
        version: int,
        sha256: str,
        size_bytes: int,
        storage_path: str,
        mission: str,
        instrument: str,
        level: str,
        original_filename: str,
        transfer_id: str,
    ) -> datetime: ...

    async def replace(
        self, *, archive_id: str, version: int, sha256: str, size_bytes: int, transfer_id: str
    ) -> datetime: ...

    async def supersede(
        self, archive_id: str, contents: list[tuple[str, int, bool]], *, version: int, transfer_id: str
    ) -> None: ...


class UnitOfWork(Protocol):
    """The ingestor's records in one transaction, and its outbox: what is published commits with the records."""

    @property
    def versions(self) -> VersionRecords: ...

    async def publish(self, event: CloudEvent[Any]) -> None: ...


EventHandler = Callable[[UnitOfWork, CloudEvent[Any]], Awaitable[None]]
BatchEventHandler = Callable[[UnitOfWork, Sequence[CloudEvent[Any]]], Awaitable[None]]


class IngestorDatabase(Protocol):
    """Where units of work come from: PostgreSQL (:class:`services.ingestor.storage.PostgresIngestorDatabase`), or
    a fake in the unit tests."""

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    def consumer(self, name: str, handler: EventHandler) -> Handler:
        """The bus handler that runs ``handler`` once per event id, in a transaction of its own."""
        ...

    def batch_consumer(self, name: str, handler: BatchEventHandler) -> BatchHandler:
        """The bus batch handler that runs ``handler`` on a batch's events not handled before, in one transaction."""
        ...


class IngestRejected(Exception):
    """The transfer cannot be archived as it stands; the reason goes back to the observatory."""


@dataclass
class Ingestor:
    staging_root: Path
    storage: ArchiveFiles
    instruments: InstrumentCatalog

    async def ingest(self, unit: UnitOfWork, received: TransferReceived, correlation_id: str | None) -> None:
        """Archive one staged file, or tell the observatory why not (``ingest.failed``), in ``unit``'s transaction.

        Anything else raised (storage unreachable, say) rolls the transaction back, and the bus retries.
        """
        try:
            await self._archive(unit, received, correlation_id)
        except IngestRejected as exc:
            log.warning("ingest failed", transfer_id=received.transfer_id, reason=str(exc))
            await unit.publish(
                CloudEvent.create(
                    IngestFailed(transfer_id=received.transfer_id, archive_id=received.archive_id, reason=str(exc)),
                    source=SOURCE,
                    correlation_id=correlation_id,
                ),
            )
            await asyncio.to_thread(self._set_aside, received)

    async def _archive(self, unit: UnitOfWork, received: TransferReceived, correlation_id: str | None) -> None:
        store = unit.versions
        await store.lock(received.archive_id)
        versions = await store.versions(received.archive_id)
        same_content = next((v for v in versions if v.sha256 == received.sha256), None)
        if same_content is not None:
            # The same bytes again under the same archive ID: acknowledged, not stored twice.
            await unit.publish(self._completed(received, same_content.version, correlation_id, duplicate=True))
            await asyncio.to_thread(self._discard_staged, received)
            log.info("duplicate of an archived version", archive_id=received.archive_id, version=same_content.version)
            return

        replaced_by = (await store.superseded(received.archive_id)).get(received.sha256)
        if replaced_by is not None:
            # Partial content arriving after the complete file that replaces it (transfers can overtake each other):
            # acknowledged as the version holding the complete file, never archived as a version of its own.
            await unit.publish(self._completed(received, replaced_by, correlation_id, duplicate=True))
            await asyncio.to_thread(self._discard_staged, received)
            log.warning(
                "partial file arrived after the complete one, not archived",
                archive_id=received.archive_id,
                version=replaced_by,
                transfer_id=received.transfer_id,
            )
            return

        partial = version_replaced(versions, received.replaces)
        if partial is not None:
            version, relative = partial.version, partial.storage_path
        else:
            version = max((v.version for v in versions), default=0) + 1
            relative = self.storage.relative_path(
                received.mission,
                received.instrument,
                _ut_date(received),
                received.archive_id,
                version,
                received.original_filename,
            )
        # The file work in one thread hop: it is a few system calls when the bytes are not read again.
        await asyncio.to_thread(self._place, self._staged_path(received), relative, received, partial is not None)

        if partial is not None:
            archived_at = await store.replace(
                archive_id=received.archive_id,
                version=version,
                sha256=received.sha256,
                size_bytes=received.size_bytes,
                transfer_id=received.transfer_id,
            )
            log.warning(
                "complete file replaced the partial one archived before",
                archive_id=received.archive_id,
                version=version,
                bytes=received.size_bytes,
                partial_bytes=partial.size_bytes,
                partial_sha256=partial.sha256,
            )
        else:
            archived_at = await store.add(
                archive_id=received.archive_id,
                version=version,
                sha256=received.sha256,
                size_bytes=received.size_bytes,
                storage_path=relative,
                mission=received.mission,
                instrument=received.instrument,
                level=received.level,
                original_filename=received.original_filename,
                transfer_id=received.transfer_id,
            )
            log.info("file archived", archive_id=received.archive_id, version=version, bytes=received.size_bytes)
        if received.replaces:
            # Whatever was sent before for this file, archived or not yet: never a version of its own from now on.
            archived_partial = partial.sha256 if partial is not None else None
            await store.supersede(
                received.archive_id,
                [(r.sha256, r.size_bytes, r.sha256 == archived_partial) for r in received.replaces],
                version=version,
                transfer_id=received.transfer_id,
            )
        replaced = None if partial is None else ReplacedContent(sha256=partial.sha256, size_bytes=partial.size_bytes)
        await unit.publish(self._archived(received, version, relative, archived_at, correlation_id, replaced))
        await unit.publish(self._completed(received, version, correlation_id, duplicate=False))

    def _place(self, staged: Path, relative: str, received: TransferReceived, replace: bool) -> None:
        """Verify the staged file and move it into storage at ``relative``, or find it there already."""
        if staged.exists():
            verify_staged(staged, received, self.instruments)
            self.storage.move_in(staged, relative, received.size_bytes, received.sha256, replace=replace)
        elif self.storage.path(relative).exists():
            # A previous attempt moved the file and died before its commit: check what it left.
            self.storage.verify(relative, received.size_bytes, received.sha256)
        else:
            raise IngestRejected(f"the staged file {received.staged_path} is missing")

    def _staged_path(self, received: TransferReceived) -> Path:
        try:
            return self.staging_root / safe_relative(received.staged_path)
        except ValueError as exc:
            raise IngestRejected(str(exc)) from exc

    def _discard_staged(self, received: TransferReceived) -> None:
        with contextlib.suppress(FileNotFoundError, IngestRejected):
            self._staged_path(received).unlink()

    def _set_aside(self, received: TransferReceived) -> None:
        """Keep a rejected file for inspection, out of the way of new transfers."""
        with contextlib.suppress(FileNotFoundError, IngestRejected):
            staged = self._staged_path(received)
            rejected = self.staging_root / ".rejected"
            rejected.mkdir(exist_ok=True)
            staged.rename(rejected / received.transfer_id)

    def _completed(
        self, received: TransferReceived, version: int, correlation_id: str | None, *, duplicate: bool
    ) -> CloudEvent[IngestCompleted]:
        return CloudEvent.create(
            IngestCompleted(
                transfer_id=received.transfer_id, archive_id=received.archive_id, version=version, duplicate=duplicate
            ),
            source=SOURCE,
            correlation_id=correlation_id,
        )

    def _archived(
        self,
        received: TransferReceived,
        version: int,
        relative: str,
        archived_at: datetime,
        correlation_id: str | None,
        replaced: ReplacedContent | None,
    ) -> CloudEvent[FileArchived]:
        return CloudEvent.create(
            FileArchived(
                archive_id=received.archive_id,
                version=version,
                mission=received.mission,
                instrument=received.instrument,
                level=received.level,
                propid=received.propid,
                obset=received.obset,
                original_filename=received.original_filename,
                storage_path=relative,
                size_bytes=received.size_bytes,
                sha256=received.sha256,
                archived_at=archived_at,
                written_at=received.written_at,
                metadata=received.metadata,
                software_version=received.metadata.software_version,
                reference_files=received.metadata.reference_files,
                transfer_id=received.transfer_id,
                replaces=replaced,
            ),
            source=SOURCE,
            correlation_id=correlation_id,
        )


def verify_staged(staged: Path, received: TransferReceived, instruments: InstrumentCatalog) -> None:
    """The staged bytes are the manifest's, and its header says what the manifest says.

    The bytes were verified as FITS (every HDU, CHECKSUM/DATASUM) by DEP at the observatory, and the receiver
    hashed them as it wrote them and made them durable before it said "received": the sha256 proves these are
    the same bytes, so they are not read again here (the scrubber re-reads archived files later, at its own pace),
    only the size is checked and the header read, to check it against the instrument rules. Unless another name
    holds the staged inode (shared-filesystem mode links the observatory's own file into staging): whoever holds
    it may have changed the bytes since the receiver's check, so they are hashed again.
    """
    status = os.stat(staged)
    if status.st_nlink > 1:
        digest, size = sha256_file(staged)
    else:
        digest, size = received.sha256, status.st_size
    if (digest, size) != (received.sha256, received.size_bytes):
        raise IngestRejected(
            f"staged file has {size} bytes with sha256 {digest}; the manifest says {received.size_bytes} "
            f"bytes with sha256 {received.sha256}"
        )
    try:
        header = read_header(staged)
        instrument = instruments.instrument(received.mission, received.instrument)
    except InvalidFile as exc:
        raise IngestRejected(f"not a valid FITS file: {exc}") from exc
    except KeyError as exc:
        raise IngestRejected(f"unknown instrument {received.mission}/{received.instrument}") from exc
    products = [
        p
        for p in instrument.products
        if p.level == received.level and fnmatch.fnmatch(received.original_filename, p.pattern)
    ]
    if not products:
        raise IngestRejected(
            f"{received.original_filename} is not a level-{received.level} product of {instrument.name}"
        )
    try:
        evaluation = instrument.evaluate(header, received.original_filename, products[0])
    except InvalidFile as exc:
        raise IngestRejected(f"header does not satisfy the {instrument.name} rules: {exc}") from exc
    claimed = (received.archive_id, received.level, received.propid)
    found = (evaluation.archive_id, evaluation.level, evaluation.propid)
    if claimed != found:
        raise IngestRejected(f"the manifest says archive ID, level, program {claimed} but the header gives {found}")


def version_replaced(versions: list[ArchivedVersion], replaces: list[ReplacedContent]) -> ArchivedVersion | None:
    """The archived version a complete file replaces in place: the latest, when it holds content sent before for it.

    Only the latest: a file taken too early is replaced before anything else is archived under its archive ID. If a
    newer version came in between (someone else's), or the partial content was never archived (refused, or still
    on its way), the complete file is archived as a version of its own, and the partial content, if it comes, is
    recognised as superseded.
    """
    if not versions or not replaces:
        return None
    latest = versions[-1]
    return latest if (latest.sha256, latest.size_bytes) in {(r.sha256, r.size_bytes) for r in replaces} else None


def _ut_date(received: TransferReceived) -> date:
    observed = received.metadata.observed_at
    if observed is not None:
        return (observed.astimezone(UTC) if observed.tzinfo else observed).date()
    if received.written_at is not None:
        return received.written_at.date()
    raise IngestRejected("neither the observation time nor the write time is known: no UT date for storage")
