"""A server Skyport needs that cannot be reached, said in one line: what, where (password hidden), what to check."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlsplit, urlunsplit


class Unreachable(ConnectionError):
    """PostgreSQL or the broker could not be reached, or refused to let us in.

    The command line prints the message alone (no traceback) and exits non-zero: it is the operator's to fix,
    not a bug.
    """

    def __init__(self, what: str, url: str, reason: str, check: str) -> None:
        self.what = what
        self.where = redact(url)
        self.reason = reason.rstrip(". ")
        self.check = check
        super().__init__(f"cannot reach {what} at {self.where}: {self.reason}; {check}")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print and log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect_reason(exc: BaseException, timeout: float | None = None) -> str:
    """Why a connection failed, in a few words (the exception's own text is often a traceback's worth)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    # Client libraries wrap the socket's error: the socket's says it plainly.
    for error in chain:
        if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(error, TimeoutError):
            return f"no answer within {timeout:g} s" if timeout else "no answer"
        if isinstance(error, socket.gaierror):
            return "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__
