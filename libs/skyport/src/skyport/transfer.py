"""The transfer contract between an observatory's monitor and the archive's receiver (HTTP, ``/v1/transfers``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skyport.events.models import ArchiveId, HeaderMetadata, ReplacedContent, Sha256
from skyport.files import check_relative_path

MAX_FILENAME_LENGTH = 255


def check_filename(name: str) -> str:
    """A file name from outside: a plain base name, never a path, never anything a file system would misread."""
    if not name or len(name) > MAX_FILENAME_LENGTH:
        raise ValueError(f"file name must have 1 to {MAX_FILENAME_LENGTH} characters")
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise ValueError("file name contains a NUL or control character")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise ValueError(f"file name {name!r} is a path, not a name")
    return name


class Manifest(BaseModel):
    """What DEP learned about a file, sent before its bytes: the receiver checks the bytes against it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    archive_id: ArchiveId
    original_filename: str
    size_bytes: int = Field(ge=0)
    sha256: Sha256
    mission: str = Field(min_length=1)
    instrument: str = Field(min_length=1)
    level: str = Field(min_length=1)
    propid: str = Field(min_length=1)
    obset: str | None = None
    written_at: datetime = Field(description="When the instrument closed the file (for end-to-end latency).")
    metadata: HeaderMetadata = Field(default_factory=HeaderMetadata, description="Header metadata extracted by DEP.")
    shared_path: str | None = Field(
        default=None,
        description="Shared-filesystem mode: the file's path relative to the shared mount; no content upload.",
    )
    replaces: list[ReplacedContent] = Field(
        default_factory=list,
        max_length=16,
        description="What the monitor sent before for this file, newest first, when its completion rule took it too "
        "early (it grew or changed after it was sent): the archive replaces that content with this file.",
    )

    _check_name = field_validator("original_filename")(classmethod(lambda cls, v: check_filename(v)))

    @field_validator("shared_path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for part in check_relative_path(value, "shared_path").split("/"):
            check_filename(part)
        return value


class TransferState(StrEnum):
    """Where a transfer is, as the receiver reports it to the monitor."""

    CREATED = "created"  # manifest accepted, content not yet received
    RECEIVED = "received"  # content staged and verified, handed to the ingestor
    INGESTED = "ingested"  # archived (or recognised as a duplicate of an archived version)
    FAILED = "failed"  # will not be archived; ``reason`` says why


class TransferStatus(BaseModel):
    """The answer of ``POST /v1/transfers`` and ``GET /v1/transfers/{id}``."""

    model_config = ConfigDict(frozen=True)

    transfer_id: str
    state: TransferState
    archive_id: str
    sha256: str
    version: int | None = None
    duplicate: bool = False
    reason: str | None = None
    updated_at: datetime


# How many transfers one status question may name: a monitor asks for its uploaded files in rounds of this many.
MAX_STATUS_QUERY = 500


class TransferStatusQuery(BaseModel):
    """The body of ``POST /v1/transfers/statuses``: the transfers whose states a site asks for, in one round trip."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transfer_ids: list[str] = Field(max_length=MAX_STATUS_QUERY)


class TransferStatuses(BaseModel):
    """The answer of ``POST /v1/transfers/statuses``: the asking site's transfers among those named (an id of no
    transfer of this site is left out)."""

    model_config = ConfigDict(frozen=True)

    transfers: list[TransferStatus]
