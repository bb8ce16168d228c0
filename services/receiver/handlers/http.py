"""The transfer API (``/v1/transfers``): manifests in, bytes in, states out. See ``openapi.yaml``."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.receiver.settings import ReceiverSettings
from services.receiver.staging import ChecksumMismatch, StagedFile, Staging
from services.receiver.storage import SiteStore, Transfer, TransferStore
from skyport.api.errors import ErrorCode
from skyport.db import Database, enqueue
from skyport.events import CloudEvent, TransferReceived
from skyport.http import ApiError, json_body, json_errors, refuse_nul
from skyport.transfer import Manifest, TransferState

SOURCE = "/skyport/receiver"
CHUNK = 1 << 20

log = structlog.get_logger("skyport.receiver")


def problem(status: int, message: str, **detail: Any) -> ApiError:
    return ApiError(status, message, **detail)


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


class TransferApi:
    """The handlers; one instance per process, holding the limits that span requests."""

    def __init__(self, db: Database, settings: ReceiverSettings, metrics: ReceiverMetrics) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.staging = Staging(settings.staging_dir)
        self._uploads = asyncio.Semaphore(settings.max_concurrent_uploads)
        self._active: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors(), refuse_nul, self.authenticate], client_max_size=1 << 20)
        app.router.add_post("/v1/transfers", self.create_transfer)
        app.router.add_put("/v1/transfers/{transfer_id}/content", self.upload_content)
        app.router.add_get("/v1/transfers/{transfer_id}", self.get_transfer)
        return app

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.metrics.rejected.labels("unauthenticated").inc()
            raise problem(401, "this endpoint needs the site's credential: Authorization: Bearer <token>")
        # Asked of the database every time, never remembered: a credential rotated or removed (by any process) is
        # refused from the next request on.
        async with self.db.pool.acquire() as conn:
            site = await SiteStore(conn).site_for(token.strip())
        if site is None:
            self.metrics.rejected.labels("bad_credential").inc()
            log.warning("request with an unknown credential", peer=request.remote, path=request.path)
            raise problem(401, "the credential is not valid for any site")
        request["site"] = site
        with structlog.contextvars.bound_contextvars(site=site):
            return await handler(request)

    async def create_transfer(self, request: web.Request) -> web.Response:
        try:
            # Strictly, as the document shows it: a number is not a time, nor text a size.
            manifest = await json_body(request, Manifest, status=422, limit=" (a manifest is at most 1 MiB)")
        except ApiError as exc:
            self.metrics.rejected.labels("too_large" if exc.status == 413 else "bad_manifest").inc()
            raise
        if manifest.size_bytes > self.settings.max_upload_bytes:
            self.metrics.rejected.labels("too_large").inc()
            raise problem(
                413,
                f"the file is {manifest.size_bytes} bytes; this receiver accepts at most "
                f"{self.settings.max_upload_bytes}",
            )
        if manifest.shared_path is not None and self.settings.shared_dir is None:
            raise problem(
                422,
                "shared-filesystem mode is not enabled on this receiver: upload the content",
                code=ErrorCode.SHARED_MODE_DISABLED,
            )
        async with self.db.transaction() as conn:
            transfer, created = await TransferStore(conn).create(request["site"], manifest)
        log.info(
            "transfer created" if created else "transfer already known",
            transfer_id=transfer.transfer_id,
            archive_id=manifest.archive_id,
        )
        if manifest.shared_path is not None and transfer.state is TransferState.CREATED:
            transfer = await self._receive_shared(transfer)
        response = web.json_response(transfer.status().model_dump(mode="json"), status=201 if created else 200)
        response.headers["Location"] = f"/v1/transfers/{transfer.transfer_id}"
        return response

    async def get_transfer(self, request: web.Request) -> web.Response:
        transfer = await self._own_transfer(request)
        return web.json_response(transfer.status().model_dump(mode="json"))

    async def upload_content(self, request: web.Request) -> web.Response:
        transfer = await self._own_transfer(request)
        if transfer.state is not TransferState.CREATED:
            # Received already (a retry after a lost response): the same answer again, the bytes unread.
            return web.json_response(transfer.status().model_dump(mode="json"))
        if transfer.manifest.shared_path is not None:
            raise problem(409, "this transfer is in shared-filesystem mode: its content is not uploaded")
        declared = request.content_length
        if declared is not None and declared != transfer.manifest.size_bytes:
            self.metrics.rejected.labels("size_mismatch").inc()
            too_large = declared > self.settings.max_upload_bytes
            raise problem(
                413 if too_large else 422,
                f"Content-Length is {declared}; the manifest says {transfer.manifest.size_bytes}",
                code=ErrorCode.PAYLOAD_TOO_LARGE if too_large else ErrorCode.SIZE_MISMATCH,
            )
        if transfer.transfer_id in self._active:
            raise problem(409, "an upload of this transfer is already in progress")
        if self._uploads.locked():
            self.metrics.rejected.labels("busy").inc()
            raise ApiError(
                503, "too many uploads at once; retry shortly", code=ErrorCode.BUSY, headers={"Retry-After": "1"}
            )
        async with self._uploads:
            self._active.add(transfer.transfer_id)
            try:
                staged = await self._receive_stream(request, transfer)
            finally:
                self._active.discard(transfer.transfer_id)
        return web.json_response((await self._mark_received(transfer, staged)).status().model_dump(mode="json"))

    async def _own_transfer(self, request: web.Request) -> Transfer:
        async with self.db.pool.acquire() as conn:
            transfer = await TransferStore(conn).get(request.match_info["transfer_id"])
        if transfer is None or transfer.site != request["site"]:
            raise problem(404, "no such transfer for this site")
        return transfer

    async def _receive_stream(self, request: web.Request, transfer: Transfer) -> StagedFile:
        started = time.perf_counter()
        manifest = transfer.manifest
        hasher = hashlib.sha256()
        part = await asyncio.to_thread(self.staging.open_part, transfer.transfer_id)
        try:
            received = 0
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > manifest.size_bytes:
                    self.metrics.rejected.labels("too_large").inc()
                    raise problem(413, f"more bytes than the manifest's {manifest.size_bytes}")
                # hashlib and the write both release the GIL: a thread keeps the loop free for other uploads.
                await asyncio.to_thread(_hash_and_write, hasher, part, chunk)
            staged = await asyncio.to_thread(
                self.staging.commit_part,
                transfer.transfer_id,
                part,
                manifest.size_bytes,
                manifest.sha256,
                hasher.hexdigest(),
            )
        except ChecksumMismatch as exc:
            self.metrics.rejected.labels("checksum_mismatch").inc()
            log.warning("upload rejected", transfer_id=transfer.transfer_id, reason=str(exc))
            raise problem(422, f"checksum mismatch: {exc}", code=ErrorCode.CHECKSUM_MISMATCH) from None
        except BaseException:
            part.close()
            await asyncio.to_thread(self.staging.discard_part, transfer.transfer_id)
            raise
        self.metrics.upload_seconds.observe(time.perf_counter() - started)
        self.metrics.received_bytes.inc(staged.size_bytes)
        return staged

    async def _receive_shared(self, transfer: Transfer) -> Transfer:
        assert self.settings.shared_dir is not None
        assert transfer.manifest.shared_path is not None
        source = self.settings.shared_dir / Path(transfer.manifest.shared_path)
        if not await asyncio.to_thread(source.is_file):
            raise problem(
                422, f"{transfer.manifest.shared_path} is not in the shared folder", code=ErrorCode.NOT_IN_SHARED_FOLDER
            )
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
            raise problem(422, f"checksum mismatch: {exc}", code=ErrorCode.CHECKSUM_MISMATCH) from None
        return await self._mark_received(transfer, staged)

    async def _mark_received(self, transfer: Transfer, staged: StagedFile) -> Transfer:
        manifest = transfer.manifest
        event = CloudEvent.create(
            TransferReceived(
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
            ),
            source=SOURCE,
            correlation_id=transfer.transfer_id,
        )
        async with self.db.transaction() as conn:
            store = TransferStore(conn)
            current = await store.get(transfer.transfer_id, for_update=True)
            assert current is not None
            if current.state is TransferState.CREATED:
                await store.set_state(transfer.transfer_id, TransferState.RECEIVED, staged_path=staged.relative_path)
                await enqueue(conn, event)
            updated = await store.get(transfer.transfer_id)
        assert updated is not None
        log.info(
            "file staged", transfer_id=transfer.transfer_id, archive_id=manifest.archive_id, bytes=staged.size_bytes
        )
        return updated


def _hash_and_write(hasher: Any, part: Any, chunk: bytes) -> None:
    hasher.update(chunk)
    part.write(chunk)
