"""The transfer workflow: a manifest recorded, its bytes staged, hashed and verified, then announced."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.receiver.staging import ChecksumMismatch, StagedFile, Staging, start_writeback
from services.receiver.storage import Transfer
from skyport.bus import BatchHandler, Handler
from skyport.events import CloudEvent, IngestCompleted, IngestFailed, TransferReceived
from skyport.transfer import Manifest, TransferState, TransferStatus

SOURCE = "/skyport/receiver"
WRITEBACK_BYTES = 4 << 20
"""Bytes of an upload after which the kernel is asked to start writing them to disk (see ``_stage``)."""

log = structlog.get_logger("skyport.receiver")


class TransferRefused(Exception):
    """A manifest or its content refused; the words go back to the site."""


class TooLarge(TransferRefused):
    """More bytes than this receiver accepts, or than the manifest says."""


class SizeMismatch(TransferRefused):
    """The upload declares another size than the manifest's."""


class BadChecksum(TransferRefused):
    """The bytes received are not the bytes the manifest describes (nothing of them is kept)."""


class SharedModeDisabled(TransferRefused):
    """A shared-filesystem manifest sent to a receiver that has no shared folder."""


class NotInSharedFolder(TransferRefused):
    """A shared-filesystem manifest naming a file the shared folder does not hold."""


class NoSuchTransfer(TransferRefused):
    """No transfer of that id for this site (the same answer whether it exists for another site or not)."""


class ContentNotUploaded(TransferRefused):
    """Bytes sent for a shared-filesystem transfer, whose content is read where it lies."""


class UploadInProgress(TransferRefused):
    """A second upload of a transfer while the first is still being received."""


class Busy(TransferRefused):
    """As many uploads as this receiver takes at once are in progress: retry shortly."""


class SiteRecords(Protocol):
    async def site_for(self, token: str) -> str | None: ...


class TransferRecords(Protocol):
    async def create(self, site: str, manifest: Manifest) -> tuple[Transfer, bool]: ...

    async def get(self, transfer_id: str, *, for_update: bool = False) -> Transfer | None: ...

    async def statuses(self, site: str, transfer_ids: Sequence[str]) -> list[TransferStatus]: ...

    async def set_state(
        self,
        transfer_id: str,
        state: TransferState,
        *,
        reason: str | None = None,
        staged_path: str | None = None,
        version: int | None = None,
        duplicate: bool = False,
    ) -> None: ...

    async def mark_received(self, transfer_id: str, staged_path: str) -> Transfer | None:
        """The transfer received now, its file at ``staged_path``; None if it was not waiting for its content."""
        ...

    async def record_results(self, results: Sequence[IngestCompleted | IngestFailed]) -> set[str]:
        """Each transfer's verdict (the last one given for it wins); returns the ids of the transfers found."""
        ...


class UnitOfWork(Protocol):
    """The receiver's records on one connection, and its outbox: what is published commits with the records."""

    @property
    def sites(self) -> SiteRecords: ...

    @property
    def transfers(self) -> TransferRecords: ...

    async def publish(self, event: CloudEvent[Any]) -> None: ...


EventHandler = Callable[[UnitOfWork, CloudEvent[Any]], Awaitable[None]]
BatchEventHandler = Callable[[UnitOfWork, Sequence[CloudEvent[Any]]], Awaitable[None]]


class ReceiverDatabase(Protocol):
    """Where units of work come from: PostgreSQL (:class:`services.receiver.storage.PostgresReceiverDatabase`), or
    a fake in the unit tests."""

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work that commits when the block ends without an exception, and rolls back otherwise."""
        ...

    def connection(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work without a transaction, each statement committed on its own: for a read, or a write that
        stands alone (no BEGIN and COMMIT to pay)."""
        ...

    def consumer(self, name: str, handler: EventHandler) -> Handler:
        """The bus handler that runs ``handler`` once per event id, in a transaction of its own."""
        ...

    def batch_consumer(self, name: str, handler: BatchEventHandler) -> BatchHandler:
        """The bus batch handler that runs ``handler`` on a batch's events not handled before, in one transaction."""
        ...


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.upload_seconds = Histogram(
            "skyport_receiver_upload_seconds",
            "Time to receive, hash and stage one file.",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.received_bytes = Counter(
            "skyport_receiver_received_bytes_total", "Bytes staged and verified.", registry=registry
        )
        self.rejected = Counter(
            "skyport_receiver_rejected_total",
            "Uploads and manifests refused, by reason.",
            ("reason",),
            registry=registry,
        )


class TransferService:
    """The transfers of every site; one instance per process, holding the limits that span requests."""

    def __init__(
        self,
        database: ReceiverDatabase,
        staging: Staging,
        metrics: ReceiverMetrics,
        *,
        max_upload_bytes: int,
        max_concurrent_uploads: int,
        shared_dir: Path | None = None,
    ) -> None:
        self.database = database
        self.staging = staging
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        self.shared_dir = shared_dir
        self._uploads = asyncio.Semaphore(max_concurrent_uploads)
        self._active: set[str] = set()

    async def site_for(self, token: str) -> str | None:
        """The site whose credential ``token`` is, None for none.

        Asked of the database every time, never remembered: a credential rotated or removed (by any process) is
        refused from the next request on.
        """
        async with self.database.connection() as unit:
            return await unit.sites.site_for(token)

    async def create(self, site: str, manifest: Manifest) -> tuple[Transfer, bool]:
        """The site's transfer for this manifest: created now (True), or the one it made before (False).

        The same archive ID and checksum again is the same transfer, so a site that lost the answer asks again
        safely. A shared-filesystem transfer is received at once, from where its file lies.
        """
        if manifest.size_bytes > self.max_upload_bytes:
            self.metrics.rejected.labels("too_large").inc()
            raise TooLarge(
                f"the file is {manifest.size_bytes} bytes; this receiver accepts at most {self.max_upload_bytes}"
            )
        if manifest.shared_path is not None and self.shared_dir is None:
            raise SharedModeDisabled("shared-filesystem mode is not enabled on this receiver: upload the content")
        # No transaction: the insert stands alone (it either adds the row or finds one there), and BEGIN and
        # COMMIT would be two more round trips for every file.
        async with self.database.connection() as unit:
            transfer, created = await unit.transfers.create(site, manifest)
        log.info(
            "transfer created" if created else "transfer already known",
            transfer_id=transfer.transfer_id,
            archive_id=manifest.archive_id,
        )
        if manifest.shared_path is not None and transfer.state is TransferState.CREATED:
            transfer = await self._receive_shared(transfer)
        return transfer, created

    async def get(self, site: str, transfer_id: str) -> Transfer:
        async with self.database.connection() as unit:
            transfer = await unit.transfers.get(transfer_id)
        if transfer is None or transfer.site != site:
            raise NoSuchTransfer("no such transfer for this site")
        return transfer

    async def statuses(self, site: str, transfer_ids: Sequence[str]) -> list[TransferStatus]:
        """The states of the site's transfers among ``transfer_ids``, in one query: what a monitor follows."""
        async with self.database.connection() as unit:
            return await unit.transfers.statuses(site, transfer_ids)

    async def status(self, site: str, transfer_id: str) -> TransferStatus:
        found = await self.statuses(site, [transfer_id])
        if not found:
            raise NoSuchTransfer("no such transfer for this site")
        return found[0]

    async def upload(
        self, site: str, transfer_id: str, content: AsyncIterable[bytes], declared_size: int | None
    ) -> Transfer:
        """Receive a transfer's bytes: hashed while written, verified against the manifest, made durable, recorded
        and announced (``transfer.received``) in one transaction.

        Received already (a retry after a lost answer): the same transfer again, the bytes unread.
        """
        transfer = await self.get(site, transfer_id)
        if transfer.state is not TransferState.CREATED:
            return transfer
        manifest = transfer.manifest
        if manifest.shared_path is not None:
            raise ContentNotUploaded("this transfer is in shared-filesystem mode: its content is not uploaded")
        if declared_size is not None and declared_size != manifest.size_bytes:
            self.metrics.rejected.labels("size_mismatch").inc()
            refusal = TooLarge if declared_size > self.max_upload_bytes else SizeMismatch
            raise refusal(f"Content-Length is {declared_size}; the manifest says {manifest.size_bytes}")
        if transfer.transfer_id in self._active:
            raise UploadInProgress("an upload of this transfer is already in progress")
        if self._uploads.locked():
            self.metrics.rejected.labels("busy").inc()
            raise Busy("too many uploads at once; retry shortly")
        async with self._uploads:
            self._active.add(transfer.transfer_id)
            try:
                staged = await self._stage(transfer, content)
            finally:
                self._active.discard(transfer.transfer_id)
        return await self._mark_received(transfer, staged)

    async def _stage(self, transfer: Transfer, content: AsyncIterable[bytes]) -> StagedFile:
        started = time.perf_counter()
        manifest = transfer.manifest
        hasher = hashlib.sha256()
        part = await asyncio.to_thread(self.staging.open_part, transfer.transfer_id)
        # The sha256 and the write are done here, in the event loop, piece by piece as the socket gives them (each
        # at most the handler's chunk, 1 MB): about 1 ms of CPU per MB, where handing the bytes to a thread, in
        # pieces or gathered into blocks, cost a third more CPU per MB and was slower (thread hops, and page
        # faults for the memory held meanwhile). The write copies into the page cache; every WRITEBACK_BYTES the
        # kernel is asked to start writing what came so far (in a thread: that call may wait for the disk), so
        # that this upload never holds many dirty pages (which would make its writes wait) and the fsync before
        # "received" waits for the last few MB only.
        pushing: asyncio.Future[None] | None = None
        try:
            received = pushed = 0
            async for chunk in content:
                received += len(chunk)
                if received > manifest.size_bytes:
                    self.metrics.rejected.labels("too_large").inc()
                    raise TooLarge(f"more bytes than the manifest's {manifest.size_bytes}")
                hasher.update(chunk)
                part.write(chunk)
                if received - pushed >= WRITEBACK_BYTES:
                    if pushing is not None:
                        await asyncio.shield(pushing)  # a cancelled upload still waits for the thread (below)
                    part.flush()
                    pushing = asyncio.ensure_future(
                        asyncio.to_thread(start_writeback, part.fileno(), pushed, received - pushed)
                    )
                    pushed = received
            if pushing is not None:
                await asyncio.shield(pushing)
                pushing = None
            staged = await asyncio.to_thread(
                self.staging.commit_part,
                transfer.transfer_id,
                part,
                manifest.size_bytes,
                manifest.sha256,
                hasher.hexdigest(),
            )
        except ChecksumMismatch as exc:
            # commit_part has discarded the part already.
            self.metrics.rejected.labels("checksum_mismatch").inc()
            log.warning("upload rejected", transfer_id=transfer.transfer_id, reason=str(exc))
            raise BadChecksum(f"checksum mismatch: {exc}") from None
        except BaseException:
            if pushing is not None:
                # The thread works on the part whatever happens here: let it finish before closing.
                await asyncio.gather(pushing, return_exceptions=True)
            part.close()
            await asyncio.to_thread(self.staging.discard_part, transfer.transfer_id)
            raise
        self.metrics.upload_seconds.observe(time.perf_counter() - started)
        self.metrics.received_bytes.inc(staged.size_bytes)
        return staged

    async def _receive_shared(self, transfer: Transfer) -> Transfer:
        assert self.shared_dir is not None
        assert transfer.manifest.shared_path is not None
        source = self.shared_dir / Path(transfer.manifest.shared_path)
        if not await asyncio.to_thread(source.is_file):
            raise NotInSharedFolder(f"{transfer.manifest.shared_path} is not in the shared folder")
        try:
            staged = await asyncio.to_thread(
                self.staging.stage_shared,
                transfer.transfer_id,
                source,
                transfer.manifest.size_bytes,
                transfer.manifest.sha256,
            )
        except ChecksumMismatch as exc:
            self.metrics.rejected.labels("checksum_mismatch").inc()
            raise BadChecksum(f"checksum mismatch: {exc}") from None
        return await self._mark_received(transfer, staged)

    async def _mark_received(self, transfer: Transfer, staged: StagedFile) -> Transfer:
        """Record the staged file and put ``transfer.received`` in the outbox, together or not at all."""
        event = CloudEvent.create(
            transfer_received(transfer, staged), source=SOURCE, correlation_id=transfer.transfer_id
        )
        async with self.database.transaction() as unit:
            # Two uploads of one transfer can both reach here (from two processes): the first one records it.
            updated = await unit.transfers.mark_received(transfer.transfer_id, staged.relative_path)
            if updated is not None:
                await unit.publish(event)
            else:
                updated = await unit.transfers.get(transfer.transfer_id)
        assert updated is not None
        log.info(
            "file staged",
            transfer_id=transfer.transfer_id,
            archive_id=transfer.manifest.archive_id,
            bytes=staged.size_bytes,
        )
        return updated


def transfer_received(transfer: Transfer, staged: StagedFile) -> TransferReceived:
    """What the ingestor is told of a staged file: the manifest's, with where the file waits; the manifest's
    ``replaces`` (content sent before for a file taken too early) travels unchanged."""
    manifest = transfer.manifest
    return TransferReceived(
        transfer_id=transfer.transfer_id,
        site=transfer.site,
        archive_id=manifest.archive_id,
        mission=manifest.mission,
        instrument=manifest.instrument,
        level=manifest.level,
        propid=manifest.propid,
        obset=manifest.obset,
        original_filename=manifest.original_filename,
        staged_path=staged.relative_path,
        size_bytes=staged.size_bytes,
        sha256=staged.sha256,
        metadata=manifest.metadata,
        written_at=manifest.written_at,
        replaces=manifest.replaces,
    )


class UnknownTransfer(Exception):
    """An ingest result for a transfer this receiver never received."""


async def record_ingest_result(unit: UnitOfWork, result: IngestCompleted | IngestFailed) -> None:
    """Record the ingestor's verdict on the transfer, for the monitor that follows it."""
    if await unit.transfers.get(result.transfer_id) is None:
        raise UnknownTransfer(f"no transfer {result.transfer_id!r} was received here")
    if isinstance(result, IngestCompleted):
        await unit.transfers.set_state(
            result.transfer_id, TransferState.INGESTED, version=result.version, duplicate=result.duplicate
        )
    else:
        await unit.transfers.set_state(result.transfer_id, TransferState.FAILED, reason=result.reason)


async def record_ingest_results(unit: UnitOfWork, results: Sequence[IngestCompleted | IngestFailed]) -> None:
    """:func:`record_ingest_result` for a batch, in one statement; raises :class:`UnknownTransfer` if any of the
    transfers was never received here (the batch is then recorded again one verdict at a time)."""
    found = await unit.transfers.record_results(results)
    unknown = sorted({r.transfer_id for r in results} - found)
    if unknown:
        raise UnknownTransfer(f"no transfer {unknown[0]!r} was received here")
