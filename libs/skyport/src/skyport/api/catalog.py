"""The catalog API's answers (as its OpenAPI document shows them): what the catalog sends and its clients read.

Only the fields named here are ever sent, whatever the catalog's tables hold, so that a new column changes the
public API only when a field is added here (and to the document, which a test compares with these models).
Clients read them tolerantly: a field a newer catalog adds is ignored.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.json_schema import SkipJsonSchema

Timestamp = Annotated[datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")]
"""A date and time, sent as Python's ISO 8601 (``2026-03-15T08:00:00+00:00``), as the API always has."""

Role = Literal["pi", "coi", "collaborator"]


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Product(_Answer):
    """A product's current version. Columns follow IVOA ObsCore where it names the thing."""

    cursor: str
    """The product's position in the catalog order, as a search cursor (continues after it)."""
    archive_id: str
    version: int
    mission: str
    propid: str
    obset: str | None
    level: str
    product: str | None
    intent: Literal["science", "calibration"]
    original_filename: str
    release_date: date
    public: bool
    public_since: Timestamp | None
    released_early: bool
    obs_collection: str
    obs_id: str
    dataproduct_type: str | None
    calib_level: int | None
    target_name: str | None
    s_ra: float | None
    s_dec: float | None
    t_min: float | None
    t_max: float | None
    t_exptime: float | None
    em_min: float | None
    em_max: float | None
    instrument_name: str
    facility_name: str
    access_format: str
    access_estsize: int
    filters: list[str]
    header: dict[str, Any]
    observed_at: Timestamp | None
    night: date | None
    written_at: Timestamp | None
    first_archived_at: Timestamp
    archived_at: Timestamp
    sha256: str
    size_bytes: int
    software_version: str | None
    access_url: str
    """Download of this version."""


class ProductPage(_Answer):
    """``GET /v1/products``: a page of products in catalog order."""

    products: list[Product]
    next_cursor: str
    more: bool
    total: int | SkipJsonSchema[None] = None
    """With ``count=true`` only (absent, never null, otherwise): the visible products matching, all pages."""


class Version(_Answer):
    """One version of a product."""

    archive_id: str
    version: int
    current: bool
    sha256: str
    size_bytes: int
    original_filename: str
    software_version: str | None
    reference_files: list[str]
    supersedes_version: int | None
    archived_at: Timestamp
    catalogued_at: Timestamp
    access_url: str


class ProductDetail(Product):
    """``GET /v1/products/{archive_id}``: the product and every version, oldest first."""

    versions: list[Version]


class NightRule(_Answer):
    """An observing night's rule at a site, and the night in progress there now."""

    time_zone: str
    boundary: str
    tonight: date


class MissionNightRule(NightRule):
    mission: str


class NightRules(_Answer):
    """``GET /v1/nights``."""

    missions: list[MissionNightRule]
    default: NightRule


class Position(_Answer):
    """``GET /v1/position``: a cursor that continues after the newest change."""

    cursor: str


class ProgramRole(_Answer):
    """A program whose proprietary data the caller sees; ``role`` None for an administrator who is not a member."""

    mission: str
    propid: str
    title: str | None
    role: Role | None


class TokenInfo(_Answer):
    """An API token as its owner sees it: its id and label, never the token."""

    token_id: str
    label: str
    created_at: Timestamp


class IssuedToken(TokenInfo):
    """``POST /v1/tokens``: the new token, shown once."""

    token: str


class Me(_Answer):
    """``GET /v1/me``."""

    username: str
    display_name: str | None
    email: str | None
    is_admin: bool
    programs: list[ProgramRole]
    tokens: list[TokenInfo]


class Member(_Answer):
    username: str
    role: Role
    granted_by: str | None
    granted_at: Timestamp
    may_remove: bool
    """Whether the caller may remove this member (as the catalog's access rule says)."""


class Members(_Answer):
    """``GET /v1/programs/{mission}/{propid}/members``: PI first, and what the caller may do in the program.

    The ``may_*`` fields and ``grantable_roles`` are the catalog's own decisions for the caller, so that a
    client offers what will be allowed without knowing the rule (the catalog still checks every change).
    """

    mission: str
    propid: str
    title: str | None
    members: list[Member]
    may_manage_members: bool
    """Whether the caller may grant, change or remove any membership."""
    grantable_roles: list[Role]
    """The roles the caller may grant or change a membership to (empty when they may change none)."""
    may_release_early: bool
    """Whether the caller may release the program's data before their release date."""


class MembershipChange(_Answer):
    """``PUT /v1/programs/{mission}/{propid}/members/{username}``: the membership as it now is."""

    mission: str
    propid: str
    username: str
    role: Role
    changed: bool
    """False when it already was so."""


class Released(_Answer):
    """``POST /v1/programs/{mission}/{propid}/release``: the products made public now."""

    mission: str
    propid: str
    released: list[str]


class ProgramRef(_Answer):
    """A program, by mission and program ID."""

    mission: str
    propid: str


class ProgramAsked(ProgramRef):
    """A program in a question (a misspelt field is refused, not ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


MAX_VISIBLE_IDS = 10_000


class VisibleQuestion(BaseModel):
    """``POST /v1/access/visible`` (administrators): what may ``username`` see now, of these products and programs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(min_length=1, max_length=200)
    archive_ids: list[str] = Field(default_factory=list, max_length=MAX_VISIBLE_IDS)
    programs: list[ProgramAsked] = Field(default_factory=list, max_length=MAX_VISIBLE_IDS)
    """Programs whose proprietary data the user may or may not see (for a notice that lists no files)."""


class Visible(_Answer):
    """``POST /v1/access/visible``: the part of the question the user may see now, as the access rule decides."""

    username: str
    known: bool
    """False when the catalog has no such user: then nothing is visible, not even public data."""
    archive_ids: list[str]
    """The products asked about that the user may see (sorted; unknown ones are left out like hidden ones)."""
    programs: list[ProgramRef]
    """The programs asked about whose proprietary data the user sees: a member, or an administrator."""
