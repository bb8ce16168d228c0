"""The catalog's domain errors: what its services refuse, and why, whoever asked (the API, the commands)."""

from __future__ import annotations


class NotSignedIn(PermissionError):
    """The action needs a user, and the caller is anonymous (an API answers 401)."""


class NotAllowed(PermissionError):
    """The viewer may not do this (an API answers 403, or 404 where existence must not leak)."""


class UnknownProgram(LookupError):
    """No such program, or none the viewer may know of (an API answers 404)."""


class UnknownUser(LookupError):
    """No such user (an API answers 404)."""


class ProductNotFound(LookupError):
    """No such product, or one the viewer may not see: the two are one answer, so that existence does not leak."""

    def __init__(self, archive_id: str, *, anonymous: bool) -> None:
        message = f"no product {archive_id}"
        if anonymous:
            message += " among public data (proprietary data need a token)"
        super().__init__(message)
        self.archive_id = archive_id


class NoSuchVersion(LookupError):
    """A visible product that has no such version (an API answers 404 with the current version)."""

    def __init__(self, archive_id: str, version: int | None, current_version: int) -> None:
        super().__init__(f"{archive_id} has no version {version}; its current version is {current_version}")
        self.current_version = current_version


class MembershipRefused(ValueError):
    """The change breaks a rule of membership (a second PI, an unknown role); the message says which."""


class StoredFileUnusable(RuntimeError):
    """The catalog and archive storage disagree about a version's file (an API answers 500; an operator acts)."""


class StoredFileUnreadable(RuntimeError):
    """Archive storage cannot be read right now (an API answers 503; trying again later may work)."""
