"""The v1 event payloads: the pipeline commands and the dataset events that observers and pipelines live on.

Within v1 fields are only ever added, and only as optional fields. A breaking change makes ``v2``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AnyUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from skyport.events.envelope import EventData

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hexadecimal sha256.")]
ArchiveId = Annotated[str, Field(min_length=1, max_length=128, description="The archive's stable file name.")]

_ROUTING_WORD = re.compile(r"^[A-Za-z0-9_\-]+$")


def routing_word(value: str) -> str:
    """One word of a routing key: lower-case, with no dots or wildcards that would change its meaning."""
    if not _ROUTING_WORD.match(value):
        raise ValueError(f"{value!r} cannot be a routing-key word (letters, digits, '_' and '-' only)")
    return value.lower()


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- header metadata ---------------------------------------------------------------------------------

HeaderValue = str | int | float | bool | None
"""A header keyword's value as JSON carries it: FITS strings, integers, reals and logicals; null when blank."""

DataproductType = Literal["image", "cube", "spectrum", "sed", "timeseries", "visibility", "event", "measurements"]


class HeaderMetadata(_Part):
    """What DEP read from a file's header, by its instrument configuration: the catalog's description of it.

    It travels unchanged in the manifest, ``transfer.received`` and ``file.archived``, so that the catalog (and
    any consumer) describes a file without reading it. Every field is optional: an instrument configuration
    says which keywords give which field, and a header may leave a nullable keyword blank. Units are SI or
    astronomical conventions, named in the field (degrees, seconds, metres).
    """

    product: str | None = Field(default=None, description="The instrument's product kind, e.g. 'raw', 'cal'.")
    target_name: str | None = Field(default=None, description="The target as the observer named it.")
    ra_deg: float | None = Field(
        default=None, allow_inf_nan=False, description="Right ascension of the target, degrees (ICRS)."
    )
    dec_deg: float | None = Field(
        default=None, ge=-90, le=90, allow_inf_nan=False, description="Declination of the target, degrees (ICRS)."
    )
    observed_at: datetime | None = Field(default=None, description="Start of the exposure (UTC).")
    exptime_s: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="Exposure time, seconds.")
    filters: list[str] = Field(default_factory=list, description="Filters in the beam ('clear' positions left out).")
    intent: Literal["science", "calibration"] = "science"
    release_date: date | None = Field(default=None, description="When the file becomes public, by the mission's rule.")
    dataproduct_type: DataproductType | None = Field(default=None, description="ObsCore dataproduct_type.")
    calib_level: int | None = Field(
        default=None, ge=0, le=4, description="ObsCore calibration level: 1 raw, 2 calibrated, 3 combined, 4 derived."
    )
    em_min_m: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Shortest wavelength observed, metres."
    )
    em_max_m: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Longest wavelength observed, metres."
    )
    software_version: str | None = Field(
        default=None, description="The pipeline build that made the file, when its header names it."
    )
    reference_files: list[str] = Field(
        default_factory=list, description="Calibration reference files used, when the header names them."
    )
    header: dict[str, HeaderValue] = Field(
        default_factory=dict, description="The keywords the instrument configuration selects for the catalog."
    )

    @model_validator(mode="after")
    def _position_is_whole(self) -> Self:
        if (self.ra_deg is None) != (self.dec_deg is None):
            raise ValueError("ra_deg and dec_deg come together or not at all")
        if self.em_min_m is not None and self.em_max_m is not None and self.em_min_m > self.em_max_m:
            raise ValueError("em_min_m is above em_max_m")
        return self


# --- pipeline commands -------------------------------------------------------------------------------


class ReplacedContent(_Part):
    """Content sent earlier for the same file at the observatory, which a later, complete file replaces.

    A file the monitor took by itself (its instrument's completion rule decided, not the instrument) and that
    grew or changed after it was sent was taken too early: the archive replaces the partial content instead of
    keeping it as a version.
    """

    sha256: Sha256
    size_bytes: int = Field(ge=0)


class TransferReceived(EventData):
    """The receiver has staged a file and verified its checksum; the ingestor takes it from here."""

    event_type: ClassVar[str] = "transfer.received"

    transfer_id: str
    site: str = Field(description="The observatory site whose monitor sent the file.")
    archive_id: ArchiveId
    mission: str
    instrument: str
    level: str
    propid: str
    obset: str | None = None
    original_filename: str
    staged_path: str = Field(description="Where the verified file waits, relative to the staging root.")
    size_bytes: int = Field(ge=0)
    sha256: Sha256
    metadata: HeaderMetadata = Field(default_factory=HeaderMetadata, description="Header metadata extracted by DEP.")
    written_at: datetime | None = Field(default=None, description="When the instrument closed the file.")
    replaces: list[ReplacedContent] = Field(
        default_factory=list,
        description="What the monitor sent before for the same file, newest first, taken before it was complete: "
        "the archive's version holding any of it is replaced by this file, never followed by a new version.",
    )

    def subject(self) -> str:
        return self.archive_id


class FileArchived(EventData):
    """A file is in archive storage, verified; the catalog records it."""

    event_type: ClassVar[str] = "file.archived"

    archive_id: ArchiveId
    version: int = Field(ge=1)
    mission: str
    instrument: str
    level: str
    propid: str
    obset: str | None = None
    original_filename: str
    storage_path: str = Field(description="Location in archive storage, relative to the storage root.")
    size_bytes: int = Field(ge=0)
    sha256: Sha256
    archived_at: datetime
    written_at: datetime | None = None
    metadata: HeaderMetadata = Field(default_factory=HeaderMetadata, description="Header metadata extracted by DEP.")
    software_version: str | None = Field(default=None, description="The pipeline build that made the file.")
    reference_files: list[str] = Field(default_factory=list, description="Calibration reference files used.")
    transfer_id: str | None = None
    replaces: ReplacedContent | None = Field(
        default=None,
        description="Set when this content replaced a partial file archived as the same version (same archive ID "
        "and version, other checksum): the content replaced.",
    )

    def subject(self) -> str:
        return self.archive_id


class IngestCompleted(EventData):
    """The ingestor is done with a transfer: archived as a version, or recognised as a duplicate."""

    event_type: ClassVar[str] = "ingest.completed"

    transfer_id: str
    archive_id: ArchiveId
    version: int = Field(ge=1)
    duplicate: bool = Field(default=False, description="Same archive ID and checksum as a stored version.")

    def subject(self) -> str:
        return self.archive_id


class IngestFailed(EventData):
    """The ingestor could not archive a transfer; ``reason`` says why in words a person can act on."""

    event_type: ClassVar[str] = "ingest.failed"

    transfer_id: str
    archive_id: ArchiveId | None = None
    reason: str
    retryable: bool = False

    def subject(self) -> str | None:
        return self.archive_id


# --- dataset events ----------------------------------------------------------------------------------


class DatasetFile(_Part):
    """One file concerned by a dataset event."""

    archive_id: ArchiveId
    version: int = Field(ge=1)
    size_bytes: int = Field(ge=0)
    sha256: Sha256
    url: AnyUrl = Field(description="Where to download it (authorisation applies).")
    obset: str | None = None
    original_filename: str | None = None


class ReproInfo(_Part):
    """Why a dataset was reprocessed, and what it replaces."""

    software_version: str | None = None
    reference_files: list[str] = Field(default_factory=list)
    supersedes_version: int = Field(ge=1, description="The version this one replaces.")


DatasetType = Literal["new", "first", "repro", "public"]


class DatasetEvent(EventData):
    """What the archive's users have always received (mission, propid, obsets, level, type) and more.

    ``files`` lists the files concerned; ``repro`` says why a reprocessing happened. Both are optional so
    that the legacy message, ``{"obsets": [...], "mission": ..., "propid": ..., "type": ..., "level": ...}``,
    is a valid payload as it stands.
    """

    event_type: ClassVar[str] = "dataset"
    dataset_type: ClassVar[DatasetType]

    mission: str = Field(min_length=1)
    propid: str = Field(min_length=1)
    obsets: list[str] = Field(default_factory=list)
    level: str = Field(min_length=1)
    type: DatasetType
    files: list[DatasetFile] = Field(default_factory=list)
    repro: ReproInfo | None = None

    @field_validator("type")
    @classmethod
    def _type_matches_class(cls, value: str) -> str:
        if value != cls.dataset_type:
            raise ValueError(f"type must be {cls.dataset_type!r} in a {cls.event_type} event")
        return value

    def routing_key(self) -> str:
        return ".".join(
            (self.event_type, routing_word(self.mission), routing_word(self.level), routing_word(self.propid))
        )

    def legacy(self) -> dict[str, Any]:
        """The message as the archive's users receive it today."""
        return self.model_dump(include={"obsets", "mission", "propid", "type", "level"})


class DatasetNew(DatasetEvent):
    """Data for a program appeared."""

    event_type: ClassVar[str] = "dataset.new"
    dataset_type: ClassVar[DatasetType] = "new"
    type: Literal["new"] = "new"


class DatasetFirst(DatasetEvent):
    """The first data ever for a program."""

    event_type: ClassVar[str] = "dataset.first"
    dataset_type: ClassVar[DatasetType] = "first"
    type: Literal["first"] = "first"


class DatasetRepro(DatasetEvent):
    """A new version of data that already existed."""

    event_type: ClassVar[str] = "dataset.repro"
    dataset_type: ClassVar[DatasetType] = "repro"
    type: Literal["repro"] = "repro"


class DatasetPublic(DatasetEvent):
    """Data passed their release date, or the PI released them early."""

    event_type: ClassVar[str] = "dataset.public"
    dataset_type: ClassVar[DatasetType] = "public"
    type: Literal["public"] = "public"


# --- access events -----------------------------------------------------------------------------------

Role = Literal["pi", "coi", "collaborator"]


class AccessChanged(EventData):
    """A program's membership changed: a user was granted a role, or lost it (access ends at once)."""

    event_type: ClassVar[str] = "access.changed"

    mission: str = Field(min_length=1)
    propid: str = Field(min_length=1)
    username: str = Field(min_length=1, description="The user whose access changed.")
    role: Role | None = Field(default=None, description="The role held now: pi, coi or collaborator; null if revoked.")
    change: Literal["granted", "revoked"]
    changed_by: str | None = Field(
        default=None, description="Username of who made the change; null for an administration command."
    )

    def routing_key(self) -> str:
        return ".".join((self.event_type, routing_word(self.mission), routing_word(self.propid)))

    def subject(self) -> str:
        """The program: changes to one program's membership are published in the order they were made."""
        return f"{self.mission}/{self.propid}"


EVENT_MODELS: dict[str, type[EventData]] = {
    model.event_type: model
    for model in (
        TransferReceived,
        FileArchived,
        IngestCompleted,
        IngestFailed,
        DatasetNew,
        DatasetFirst,
        DatasetRepro,
        DatasetPublic,
        AccessChanged,
    )
}
"""Every v1 event type and its payload model: what a consumer can parse and what `make schemas` exports."""
