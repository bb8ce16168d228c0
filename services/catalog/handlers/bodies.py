"""The catalog API's request bodies, validated at the edge; ``openapi.yaml`` shows the same schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_LABEL = 100
MAX_RELEASE_IDS = 10_000


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemberGrant(_Body):
    """``PUT /v1/programs/{mission}/{propid}/members/{username}``."""

    role: Literal["coi", "collaborator", "pi"]


class EarlyRelease(_Body):
    """``POST /v1/programs/{mission}/{propid}/release``: the listed products, or (no list) all the program's."""

    archive_ids: list[str] | None = Field(default=None, max_length=MAX_RELEASE_IDS)

    @field_validator("archive_ids", mode="before")
    @classmethod
    def _listed_or_left_out(cls, value: object) -> object:
        # Only a missing list means "all": a null sent by mistake must not release everything.
        if value is None:
            raise ValueError("must be a list of archive IDs; leave it out to release all the program's products")
        return value


class TokenRequest(_Body):
    """``POST /v1/tokens``."""

    label: str = Field(default="", max_length=MAX_LABEL)
