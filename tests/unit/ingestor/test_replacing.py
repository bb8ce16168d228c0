"""The ingestor's choice for a complete file sent after a partial one: replace the latest version, or not."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.ingestor.archive import ArchiveFiles, StorageError
from services.ingestor.ingest import version_replaced
from services.ingestor.storage import ArchivedVersion
from skyport.events import ReplacedContent


def version(number: int, content: bytes) -> ArchivedVersion:
    return ArchivedVersion(
        archive_id="HI.20260315.12345",
        version=number,
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        storage_path=f"keck/hires/2026-03-15/HI.20260315.12345/v{number}/hires0001.fits",
        archived_at=datetime.now(UTC),
    )


def sent(content: bytes) -> ReplacedContent:
    return ReplacedContent(sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content))


def test_the_latest_version_holding_content_sent_before_is_the_one_replaced() -> None:
    partial = version(1, b"half")
    assert version_replaced([partial], [sent(b"half")]) == partial
    # Anything sent before for the file counts: the newest send may not have been archived yet.
    assert version_replaced([partial], [sent(b"three quarters"), sent(b"half")]) == partial


@pytest.mark.parametrize(
    ("versions", "replaces"),
    [
        ([], [sent(b"half")]),  # the partial file was never archived (refused, or still on its way)
        ([version(1, b"half")], []),  # nothing sent before: a file finished again by the instrument
        ([version(1, b"other")], [sent(b"half")]),  # the archive holds other content
        ([version(1, b"half"), version(2, b"reprocessed")], [sent(b"half")]),  # a newer version came in between
        ([version(1, b"half")], [ReplacedContent(sha256=sent(b"half").sha256, size_bytes=3)]),  # not the same size
    ],
    ids=["never_archived", "nothing_replaced", "other_content", "not_the_latest", "other_size"],
)
def test_otherwise_the_complete_file_is_a_version_of_its_own(
    versions: list[ArchivedVersion], replaces: list[ReplacedContent]
) -> None:
    assert version_replaced(versions, replaces) is None


def test_the_complete_file_takes_the_partial_file_s_place_in_storage(tmp_path: Path) -> None:
    storage = ArchiveFiles(tmp_path / "archive")
    relative = "keck/hires/2026-03-15/HI.1/v1/hires0001.fits"
    (tmp_path / "partial.fits").write_bytes(b"half")
    storage.move_in(tmp_path / "partial.fits", relative, 4, hashlib.sha256(b"half").hexdigest())
    complete = tmp_path / "complete.fits"
    complete.write_bytes(b"the whole file")

    with pytest.raises(StorageError):  # an archived version is never overwritten by mistake
        storage.move_in(complete, relative, 14, hashlib.sha256(b"the whole file").hexdigest())
    storage.move_in(complete, relative, 14, hashlib.sha256(b"the whole file").hexdigest(), replace=True)

    assert storage.path(relative).read_bytes() == b"the whole file"
    assert [p.name for p in storage.path(relative).parent.iterdir()] == ["hires0001.fits"]
    assert not complete.exists()
