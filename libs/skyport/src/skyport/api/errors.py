"""What every Skyport HTTP API answers when it refuses: a stable ``code`` to decide on, and words to read."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema


class ErrorCode(StrEnum):
    """Why a request was refused, for programs: stable, one per cause (the ``error`` text may change)."""

    BAD_PARAMETER = "bad_parameter"
    """A query or path parameter is malformed, unknown or out of range (``parameter`` names it)."""
    CONFLICTING_PARAMETERS = "conflicting_parameters"
    """Parameters that are each valid do not go together (a cone without its radius, t_min after t_max)."""
    UNKNOWN_CURSOR = "unknown_cursor"
    """A cursor that is not one the API gave out."""
    NUL_CHARACTER = "nul_character"
    """Text holding a NUL character, which no name or value of Skyport's has."""
    BAD_BODY = "bad_body"
    """The JSON body is missing, malformed, or a field of it is wrong (``parameter``, ``errors``)."""
    INCONSISTENT_FIELDS = "inconsistent_fields"
    """Fields of a body that are each valid do not go together (``parameter`` names the object)."""
    UNAUTHORIZED = "unauthorized"
    """No credential, or one that is unknown, revoked or expired."""
    FORBIDDEN = "forbidden"
    """The caller is known but may not do this."""
    NOT_FOUND = "not_found"
    """No such thing, or none the caller may see (the same answer for both)."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    """The request contradicts the current state (an upload in progress, a second PI)."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    SIZE_MISMATCH = "size_mismatch"
    """The bytes sent are not as many as the manifest says."""
    CHECKSUM_MISMATCH = "checksum_mismatch"
    """The bytes received do not have the manifest's sha256: the sender should evaluate its file again."""
    SHARED_MODE_DISABLED = "shared_mode_disabled"
    """A shared-filesystem transfer sent to a receiver that has no shared folder."""
    NOT_IN_SHARED_FOLDER = "not_in_shared_folder"
    NOT_A_WEBSOCKET = "not_a_websocket"
    """A plain HTTP request to a WebSocket address."""
    BUSY = "busy"
    """Too many requests of this kind at once: retry after ``Retry-After``."""
    UNAVAILABLE = "unavailable"
    """A server this one depends on cannot answer now: retry later."""
    INTERNAL = "internal"
    """The server is at fault (its data or its storage): tell its operators."""


class FieldError(BaseModel):
    """One field's problem in a refused body."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str


class ErrorBody(BaseModel):
    """The JSON body of every refusal."""

    model_config = ConfigDict(frozen=True)

    error: str
    """What went wrong, in words for a person."""
    code: ErrorCode
    # Absent, never null, when they do not apply.
    parameter: str | SkipJsonSchema[None] = None
    """The parameter or body field at fault."""
    errors: list[FieldError] | SkipJsonSchema[None] = None
    """For a body, each field's problem."""
    current_version: int | SkipJsonSchema[None] = None
    """For a version that does not exist: the product's current one."""


def error_code(document: object) -> ErrorCode | None:
    """The ``code`` of a parsed error body; None for a body without one, or with a code this version does not know."""
    code = document.get("code") if isinstance(document, dict) else None
    try:
        return ErrorCode(code) if isinstance(code, str) else None
    except ValueError:
        return None
