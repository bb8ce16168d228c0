"""What Skyport's HTTP APIs share: the JSON error they answer with (and the middleware that answers it), reading a
bearer token, and the checks every input passes at the edge (no NUL character anywhere; JSON bodies validated by
the models the documents show)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from skyport.api.errors import ErrorCode

BodyT = TypeVar("BodyT", bound=BaseModel)

CHALLENGE = 'Bearer realm="skyport"'
"""The ``WWW-Authenticate`` challenge of every API that takes bearer tokens."""


_CODE_OF_STATUS = {
    400: ErrorCode.BAD_PARAMETER,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.BAD_BODY,
    502: ErrorCode.UNAVAILABLE,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.UNAVAILABLE,
}


class ApiError(Exception):
    """An error response with a JSON body (:class:`skyport.api.errors.ErrorBody`): ``error`` in words for a person,
    ``code`` for a program (by default the usual cause of ``status``; a cause a client acts on has its own)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
        **detail: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        default = ErrorCode.INTERNAL if status >= 500 else ErrorCode.BAD_PARAMETER
        self.code = code or _CODE_OF_STATUS.get(status, default)
        self.body = {"error": message, "code": self.code.value, **detail}
        self.headers = headers or {}


Translate = Callable[[Exception], "ApiError | None"]
"""A service's own exceptions as the refusals they mean; None for an exception that is not a refusal."""


def json_errors(translate: Translate | None = None) -> Any:
    """The middleware that answers every refusal as an :class:`ApiError` body: the API's own, the service's
    exceptions that ``translate`` knows, and aiohttp's (unknown route, method, body too large)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            error = exc
        except web.HTTPRequestEntityTooLarge:
            error = ApiError(413, "the request body is too large for this API")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {404: "no such endpoint", 405: "method not allowed here"}.get(exc.status, exc.reason)
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            error = ApiError(exc.status, f"{message}: {request.method} {request.path}", headers=headers)
        except Exception as exc:
            translated = translate(exc) if translate is not None else None
            if translated is None:
                raise
            error = translated
        return web.json_response(error.body, status=error.status, headers=error.headers)

    return middleware


def bearer_token(request: web.Request) -> str | None:
    """The token of the request's ``Authorization: Bearer <token>``; None when it has no Authorization header.

    Any other Authorization header is refused (:class:`ApiError` 401), never taken for no header at all.
    """
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "the Authorization header must be 'Bearer <token>'",
            code=ErrorCode.UNAUTHORIZED,
            headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_request"'},
        )
    return token


def check_no_nul(parameter: str, value: str, *, status: int = 400) -> None:
    """Refuse text holding a NUL character (:class:`ApiError` ``status`` naming ``parameter``).

    PostgreSQL cannot store or compare a NUL in text ("invalid byte sequence for encoding UTF8: 0x00"), no
    name or value of ours has one, and a value that reached a query would be a server error instead of the
    caller's.
    """
    if "\x00" in value:
        message = f"{parameter[:100]!r} must not contain a NUL character (\\x00)"
        # `errors` as a body's validation gives it, so a client reads every refusal of a body the same way.
        errors = [{"field": parameter, "message": message}]
        raise ApiError(status, message, code=ErrorCode.NUL_CHARACTER, parameter=parameter, errors=errors)


@web.middleware
async def refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every query parameter (name and value), path parameter and header of every route, checked once here.

    JSON bodies are checked where they are read (:func:`json_body`); other bodies are bytes, never text.
    """
    for name, value in request.query.items():
        check_no_nul(name, name)
        check_no_nul(name, value)
    for name, value in request.match_info.items():
        check_no_nul(name, value)
    for name, value in request.headers.items():
        check_no_nul(name, value)
    return await handler(request)


async def json_body(
    request: web.Request, model: type[BodyT], *, required: bool = True, status: int = 400, limit: str = ""
) -> BodyT:
    """The request's JSON body validated by ``model`` (strictly: a number is not a date, nor text a number).

    An empty body is ``{}`` unless ``required``. Refusals are :class:`ApiError` ``status`` naming the first
    field at fault in ``parameter``, every field's problem in ``errors``; ``limit`` is said when the body is too
    large for the API (aiohttp's ``client_max_size``).
    """
    example = "{" + ", ".join(f'"{name}": ...' for name in model.model_fields) + "}"
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"the body is too large for this API{limit}") from None
    if not raw.strip():
        if required:
            raise ApiError(status, f"this request needs a JSON body: {example}", code=ErrorCode.BAD_BODY)
        raw = b"{}"
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ApiError(
            status, f"the body is not valid JSON ({exc}); expected {example}", code=ErrorCode.BAD_BODY
        ) from None
    if not isinstance(parsed, dict):
        raise ApiError(status, f"the body must be a JSON object: {example}", code=ErrorCode.BAD_BODY)
    for field, text in _texts(parsed, ""):
        check_no_nul(field or "body", text, status=status)
    try:
        # JSON mode, strictly, after writing integral numbers as integers: 2.0 is an integer in JSON Schema.
        return model.model_validate_json(json.dumps(_integral(parsed)), strict=True)
    except ValidationError as exc:
        problems = exc.errors()
        errors = [{"field": _field(e["loc"]), "message": _message(e)} for e in problems]
        first = errors[0]
        raise ApiError(
            status,
            f"{first['message']}; expected {example}",
            code=_body_code(problems[0]),
            parameter=first["field"],
            errors=errors,
        ) from None


def _body_code(error: Any) -> ErrorCode:
    """A validator's refusal of an object as a whole is a rule across its fields (say, ra and dec together), which
    a JSON schema cannot state; any other is a field that is not as the schema says."""
    if error["type"] == "value_error" and isinstance(error["input"], dict):
        return ErrorCode.INCONSISTENT_FIELDS
    return ErrorCode.BAD_BODY


def _texts(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a parsed JSON document, object keys included, with the dotted path to it."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            yield path, key
            yield from _texts(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{where}.{index}" if where else str(index))


def _integral(value: Any) -> Any:
    """The parsed JSON document with every number that has no fraction (``2.0``) as an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _message(error: Any) -> str:
    """Pydantic's description of one field's problem, in the words of our other refusals."""
    field = _field(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown field {field!r} in the body"
    if error["type"] == "literal_error":
        return f"{field} must be one of {error['ctx']['expected']}, not {json.dumps(error['input'])[:100]}"
    if error["type"] == "list_type":
        return f"{field} must be a list (a JSON array)"
    if error["type"] == "value_error":
        return f"{field} {error['ctx']['error']}"
    return f"{field}: {error['msg']}"


def hash_token(token: str) -> str:
    """How a token or site credential is stored and looked up: its sha256 (hex).

    Tokens are 256 random bits, so a plain sha256 is as good as a slow hash and lets us look them up.
    """
    return hashlib.sha256(token.encode()).hexdigest()
