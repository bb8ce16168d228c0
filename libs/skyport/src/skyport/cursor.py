"""Cursors in the catalog order: what the catalog's searches page with and the gateway's messages carry.

A cursor is opaque to clients (they keep it and send it back); inside Skyport it names a position in the
catalog order (``products.seq``), so that the catalog's search and the gateway's stream agree on it.
"""

from __future__ import annotations

import base64
import binascii
import re

_CURSOR = re.compile(r"^seq:(\d{1,18})$")


class BadCursor(ValueError):
    """A string that is not a cursor Skyport gave out."""


def encode_cursor(seq: int) -> str:
    """The opaque cursor that continues after catalog position ``seq``."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The catalog position a cursor names; :class:`BadCursor` for anything Skyport did not give out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    match = _CURSOR.match(text)
    if match is None:
        raise BadCursor(f"cursor {cursor[:100]!r} is not one Skyport gave out (next_cursor, or a message's cursor)")
    return int(match.group(1))
