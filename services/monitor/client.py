"""The monitor's side of the transfer API: send a manifest, stream the bytes, follow the transfer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from skyport.api.errors import ErrorCode, error_code
from skyport.transfer import (
    MAX_STATUS_QUERY,
    Manifest,
    TransferState,
    TransferStatus,
    TransferStatuses,
    TransferStatusQuery,
)

# Files up to this size are read into memory in one piece before they are sent; larger ones are streamed, so that
# memory stays bounded (upload_concurrency files of this size at most).
_READ_WHOLE = 4 * 1024 * 1024


class TransientUploadError(Exception):
    """Try again later: the archive is down, busy, or the network failed."""


class UploadRejected(Exception):
    """The archive will never take this file as it is; the reason is the archive's."""


class ContentMismatch(Exception):
    """The archive received other bytes than the manifest describes: evaluate the file again."""


class ArchiveClient:
    def __init__(self, base_url: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"}

    async def send(self, manifest: Manifest, path: Path) -> TransferStatus:
        """Create (or find) the transfer and upload its content unless the archive has it already."""
        status = await self._call("POST", "/v1/transfers", json=manifest.model_dump(mode="json"))
        if status.state is not TransferState.CREATED or manifest.shared_path is not None:
            return status
        url = f"/v1/transfers/{status.transfer_id}/content"
        headers = {"Content-Type": "application/fits", "Content-Length": str(manifest.size_bytes)}
        if manifest.size_bytes <= _READ_WHOLE:
            # One thread hop for the whole file: a file object costs one per 256 KiB piece, and each hop waits for
            # the interpreter lock that DEP's thread holds during a burst.
            content = await asyncio.to_thread(path.read_bytes)
            return await self._call("PUT", url, data=content, headers=headers)
        with await asyncio.to_thread(path.open, "rb") as stream:
            return await self._call("PUT", url, data=stream, headers=headers)

    async def status(self, transfer_id: str) -> TransferStatus:
        return await self._call("GET", f"/v1/transfers/{transfer_id}")

    async def statuses(self, transfer_ids: Sequence[str]) -> list[TransferStatus]:
        """The states of many transfers in one request per ``MAX_STATUS_QUERY``; a transfer the archive does not
        know (for this site) is left out."""
        found: list[TransferStatus] = []
        for start in range(0, len(transfer_ids), MAX_STATUS_QUERY):
            query = TransferStatusQuery(transfer_ids=list(transfer_ids[start : start + MAX_STATUS_QUERY]))
            body = await self._request("POST", "/v1/transfers/statuses", json=query.model_dump(mode="json"))
            found += TransferStatuses.model_validate_json(body).transfers
        return found

    async def _call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> TransferStatus:
        return TransferStatus.model_validate_json(await self._request(method, path, headers, **kwargs))

    async def _request(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> bytes:
        """The body of a successful answer; a refusal or a failure is raised as what the monitor should do."""
        try:
            async with self.session.request(
                method, self.base_url + path, headers={**self.headers, **(headers or {})}, **kwargs
            ) as response:
                body = await response.read()
                if response.status in (200, 201):
                    return body
                document = _document(body)
                reason = _reason(document, body) or response.reason or "no reason given"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientUploadError(f"archive unreachable: {type(exc).__name__}: {exc}") from exc
        # Decided on the code, never on the wording, which is for people and may change.
        if error_code(document) is ErrorCode.CHECKSUM_MISMATCH:
            raise ContentMismatch(reason)
        if response.status in (413, 422):
            raise UploadRejected(f"HTTP {response.status}: {reason}")
        if response.status == 401:
            raise TransientUploadError(f"the archive refused this site's credential: {reason}")
        raise TransientUploadError(f"HTTP {response.status} from the archive: {reason}")


def _document(body: bytes) -> object:
    """The parsed JSON of an error body; None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _reason(document: object, body: bytes) -> str | None:
    if document is None:
        return body.decode(errors="replace")[:500] or None
    if isinstance(document, dict):
        detail = document.get("errors")
        message = str(document.get("error", ""))
        return f"{message}: {detail}" if detail else message
    return None
