"""Archive storage on disk: where a version lives, and moving a staged file there durably."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from datetime import date
from pathlib import Path, PurePosixPath

from skyport.files import check_relative_path, fsync_directory
from skyport.fits import sha256_file
from skyport.transfer import check_filename


class StorageError(RuntimeError):
    """The file could not be placed or verified in archive storage (transient: retried)."""


def safe_relative(path: str) -> PurePosixPath:
    """A relative path from a message, refused if it could climb out of its root."""
    return PurePosixPath(check_relative_path(path))


class ArchiveFiles:
    """``<root>/<mission>/<instrument>/<UT date>/<archive ID>/v<version>/<file name>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def relative_path(
        self, mission: str, instrument: str, ut_date: date, archive_id: str, version: int, filename: str
    ) -> str:
        for word in (mission, instrument, archive_id):
            check_filename(word)
        check_filename(filename)
        return f"{mission.lower()}/{instrument.lower()}/{ut_date.isoformat()}/{archive_id}/v{version}/{filename}"

    def path(self, relative: str) -> Path:
        return self.root / safe_relative(relative)

    def move_in(self, staged: Path, relative: str, size_bytes: int, sha256: str, *, replace: bool = False) -> bool:
        """Put ``staged`` at ``relative`` and verify it there; returns True when it took a rename (no copy).

        A rename keeps the very inode whose bytes were hashed, so its size is checked; a copy to another file
        system is hashed again at its destination. An archived version is never overwritten, unless ``replace``:
        then the file there (a partial file the complete one replaces) gives way in one atomic rename, so that
        the version's path always holds one whole file, the old or the new.
        """
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        renamed = True
        # Replacing: the new file is put beside the old one first, then renamed over it.
        placed = target.with_name(f".{target.name}.replacing") if replace else target
        if replace:
            with contextlib.suppress(FileNotFoundError):
                placed.unlink()  # left by an attempt that died before its rename
        try:
            os.link(staged, placed)  # never overwrites an existing version
        except FileExistsError as exc:
            # The staged inode itself: an attempt that died between its link and the staged name's unlink.
            if not os.path.samestat(os.stat(staged), os.stat(placed)):
                raise StorageError(f"{relative} exists already; refusing to overwrite an archived version") from exc
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            renamed = False
            # A copy left by an attempt that died before its commit is kept only if it holds these very bytes:
            # the verification below hashes what is there.
            if not placed.exists():
                partial = target.with_name(f".{target.name}.partial")
                shutil.copyfile(staged, partial)
                with partial.open("rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial, placed)
        if replace:
            os.replace(placed, target)
        fsync_directory(target.parent)
        self.verify(relative, size_bytes, sha256 if not renamed else None)
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        return renamed

    def verify(self, relative: str, size_bytes: int, sha256: str | None) -> None:
        """Check the stored file's size, and its checksum when ``sha256`` is given."""
        target = self.path(relative)
        size = target.stat().st_size
        if size != size_bytes:
            raise StorageError(f"{relative} has {size} bytes in storage, expected {size_bytes}")
        if sha256 is not None:
            digest, _ = sha256_file(target)
            if digest != sha256:
                raise StorageError(f"{relative} has sha256 {digest} in storage, expected {sha256}")
