"""The staging area: uploaded bytes written, hashed and made durable before anyone is told about them."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from skyport.files import fsync_directory
from skyport.fits import sha256_file


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` on Linux (loaded at the first call, not at import); None elsewhere."""
    with contextlib.suppress(AttributeError, OSError, TypeError):
        if sys.platform.startswith("linux"):
            call = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
            call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            call.restype = ctypes.c_int
            return cast(Callable[[int, int, int, int], int], call)
    return None


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to disk now, without waiting for it.

    A big upload's bytes then go to disk while the rest arrives, and its fsync at the end waits for the last
    blocks only instead of the whole file: the durable write overlaps the transfer. It promises nothing; the
    fsync still makes the file durable (and a failure here only leaves it more to do).
    """
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class ChecksumMismatch(ValueError):
    """The bytes received are not the bytes the manifest describes."""


@dataclass(frozen=True)
class StagedFile:
    relative_path: str
    size_bytes: int
    sha256: str


class Staging:
    """Files are named by transfer id, never by a name from outside: ``<staging>/<id[:2]>/<id>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"

    def prepare(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)

    def relative_path(self, transfer_id: str) -> str:
        return f"{transfer_id[:2]}/{transfer_id}"

    def part_path(self, transfer_id: str) -> Path:
        return self.incoming / f"{transfer_id}.part"

    def open_part(self, transfer_id: str) -> BinaryIO:
        return self.part_path(transfer_id).open("wb")

    def discard_part(self, transfer_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.part_path(transfer_id).unlink()

    def commit_part(
        self, transfer_id: str, part: BinaryIO, expected_size: int, expected_sha256: str, digest: str
    ) -> StagedFile:
        """Check the finished upload against the manifest, make it durable, and move it into place."""
        size = part.tell()
        if size != expected_size or digest != expected_sha256:
            part.close()
            self.discard_part(transfer_id)
            raise ChecksumMismatch(
                f"received {size} bytes with sha256 {digest}; the manifest says {expected_size} bytes "
                f"with sha256 {expected_sha256}"
            )
        part.flush()
        os.fsync(part.fileno())
        part.close()
        return self._place(self.part_path(transfer_id), transfer_id, size, digest)

    def stage_shared(self, transfer_id: str, source: Path, expected_size: int, expected_sha256: str) -> StagedFile:
        """Shared-filesystem mode: verify the file where it lies and link it into staging (no copy)."""
        digest, size = sha256_file(source)
        if size != expected_size or digest != expected_sha256:
            raise ChecksumMismatch(
                f"{source.name} has {size} bytes with sha256 {digest}; the manifest says {expected_size} bytes "
                f"with sha256 {expected_sha256}"
            )
        part = self.part_path(transfer_id)
        self.discard_part(transfer_id)
        try:
            os.link(source, part)
        except OSError:
            shutil.copyfile(source, part)  # another file system: one copy is unavoidable
            with part.open("rb+") as handle:
                os.fsync(handle.fileno())
        return self._place(part, transfer_id, size, digest)

    def _place(self, part: Path, transfer_id: str, size: int, digest: str) -> StagedFile:
        relative = self.relative_path(transfer_id)
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        fsync_directory(target.parent)
        return StagedFile(relative, size, digest)
