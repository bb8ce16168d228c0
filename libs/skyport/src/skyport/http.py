"""What Skyport's HTTP APIs share: the JSON error they answer with, and reading a bearer token."""

from __future__ import annotations

from typing import Any

from aiohttp import web

CHALLENGE = 'Bearer realm="skyport"'
"""The ``WWW-Authenticate`` challenge of every API that takes bearer tokens."""


class ApiError(Exception):
    """An error response with a JSON body a person can act on: ``{"error": ..., **detail}``."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **detail}
        self.headers = headers or {}


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
            headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_request"'},
        )
    return token
