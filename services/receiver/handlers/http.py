"""The transfer API (``/v1/transfers``): manifests in, bytes in, states out. See ``openapi.yaml``.

Only HTTP lives here (reading the request, shaping the answer and the refusal); the workflow is
:class:`services.receiver.transfers.TransferService`.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from services.receiver.storage import Transfer
from services.receiver.transfers import (
    BadChecksum,
    Busy,
    ContentNotUploaded,
    NoSuchTransfer,
    NotInSharedFolder,
    SharedModeDisabled,
    SizeMismatch,
    TooLarge,
    TransferService,
    UploadInProgress,
)
from skyport.api.errors import ErrorCode
from skyport.http import ApiError, json_body, json_errors, refuse_nul
from skyport.transfer import Manifest, TransferStatuses, TransferStatusQuery

CHUNK = 1 << 20
# A transfer id in a path: a UUID, with or without its hyphens, in either case (the service checks it is one).
_UUID = "[0-9A-Fa-f-]{32,36}"

log = structlog.get_logger("skyport.receiver")

# Each refusal of the workflow as the API answers it: a status, and the code a client decides on.
REFUSALS: dict[type[Exception], tuple[int, ErrorCode]] = {
    TooLarge: (413, ErrorCode.PAYLOAD_TOO_LARGE),
    SizeMismatch: (422, ErrorCode.SIZE_MISMATCH),
    BadChecksum: (422, ErrorCode.CHECKSUM_MISMATCH),
    SharedModeDisabled: (422, ErrorCode.SHARED_MODE_DISABLED),
    NotInSharedFolder: (422, ErrorCode.NOT_IN_SHARED_FOLDER),
    NoSuchTransfer: (404, ErrorCode.NOT_FOUND),
    ContentNotUploaded: (409, ErrorCode.CONFLICT),
    UploadInProgress: (409, ErrorCode.CONFLICT),
    Busy: (503, ErrorCode.BUSY),
}


def refusal(exc: Exception) -> ApiError | None:
    """The answer to a refusal of the workflow; None for an exception that is not one (a server error)."""
    answer = next((REFUSALS[kind] for kind in type(exc).__mro__ if kind in REFUSALS), None)
    if answer is None:
        return None
    status, code = answer
    headers = {"Retry-After": "1"} if isinstance(exc, Busy) else None
    return ApiError(status, str(exc), code=code, headers=headers)


class TransferApi:
    """The handlers: each reads its request, calls the service once, and answers."""

    def __init__(self, transfers: TransferService) -> None:
        self.transfers = transfers

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[json_errors(refusal), refuse_nul, self.authenticate], client_max_size=1 << 20
        )
        app.router.add_post("/v1/transfers", self.create_transfer)
        app.router.add_post("/v1/transfers/statuses", self.transfer_statuses)
        # A transfer id is a UUID: so /v1/transfers/statuses is no transfer, and allows POST alone.
        app.router.add_put(f"/v1/transfers/{{transfer_id:{_UUID}}}/content", self.upload_content)
        app.router.add_get(f"/v1/transfers/{{transfer_id:{_UUID}}}", self.get_transfer)
        return app

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rejected = self.transfers.metrics.rejected
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            rejected.labels("unauthenticated").inc()
            raise ApiError(401, "this endpoint needs the site's credential: Authorization: Bearer <token>")
        site = await self.transfers.site_for(token.strip())
        if site is None:
            rejected.labels("bad_credential").inc()
            log.warning("request with an unknown credential", peer=request.remote, path=request.path)
            raise ApiError(401, "the credential is not valid for any site")
        request["site"] = site
        with structlog.contextvars.bound_contextvars(site=site):
            return await handler(request)

    async def create_transfer(self, request: web.Request) -> web.Response:
        try:
            # Strictly, as the document shows it: a number is not a time, nor text a size.
            manifest = await json_body(request, Manifest, status=422, limit=" (a manifest is at most 1 MiB)")
        except ApiError as exc:
            self.transfers.metrics.rejected.labels("too_large" if exc.status == 413 else "bad_manifest").inc()
            raise
        transfer, created = await self.transfers.create(request["site"], manifest)
        response = _status(transfer, 201 if created else 200)
        response.headers["Location"] = f"/v1/transfers/{transfer.transfer_id}"
        return response

    async def get_transfer(self, request: web.Request) -> web.Response:
        status = await self.transfers.status(request["site"], request.match_info["transfer_id"])
        return web.json_response(text=status.model_dump_json())

    async def transfer_statuses(self, request: web.Request) -> web.Response:
        query = await json_body(request, TransferStatusQuery, status=422)
        found = await self.transfers.statuses(request["site"], query.transfer_ids)
        return web.json_response(text=TransferStatuses(transfers=found).model_dump_json())

    async def upload_content(self, request: web.Request) -> web.Response:
        transfer = await self.transfers.upload(
            request["site"],
            request.match_info["transfer_id"],
            request.content.iter_chunked(CHUNK),
            request.content_length,
        )
        return _status(transfer)


def _status(transfer: Transfer, status: int = 200) -> web.Response:
    return web.json_response(transfer.status().model_dump(mode="json"), status=status)
