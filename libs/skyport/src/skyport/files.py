"""Durable file-system steps shared by the services that hold files (receiver staging, ingestor storage)."""

from __future__ import annotations

import os
from pathlib import Path


def check_relative_path(path: str, what: str = "path") -> str:
    """A relative path from outside (a message, a configuration), refused if it could climb out of its root."""
    parts = path.split("/")
    if path.startswith("/") or "\x00" in path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{what} {path!r} must be a relative path without '.', '..' or empty parts")
    return path


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new link in ``directory`` survive a power cut (the file's own fsync does not)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
