"""DEP, Data Evaluation and Processing: validate a file, read its header, checksum it, name it, write its manifest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from skyport.fits import InvalidFile, verify_fits
from skyport.instruments import InstrumentCatalog
from skyport.transfer import Manifest


class FileChanged(RuntimeError):
    """The file changed while it was evaluated (transient: it is evaluated again once it settles)."""


def evaluate(
    catalog: InstrumentCatalog, watch_root: Path, relative_path: str, expected_size: int, *, shared: bool
) -> Manifest:
    """Evaluate one file (blocking: run it in a thread). Raises :class:`InvalidFile` when the file is bad."""
    match = catalog.match(relative_path)
    if match is None:
        raise InvalidFile(f"no instrument configuration covers {relative_path}")
    path = watch_root / relative_path
    # One read of the file gives the verdict, the header and the sha256 of the very bytes verified.
    try:
        summary = verify_fits(path)
    except InvalidFile:
        if path.stat().st_size != expected_size:
            raise FileChanged(f"{relative_path} changed size while it was evaluated") from None
        raise
    evaluation = match.instrument.evaluate(summary.header, path.name, match.product)
    sha256, size = summary.sha256, summary.size_bytes
    stat = path.stat()
    if size != expected_size or stat.st_size != expected_size:
        raise FileChanged(f"{relative_path} changed size while it was evaluated")
    return Manifest(
        archive_id=evaluation.archive_id,
        original_filename=path.name,
        size_bytes=size,
        sha256=sha256,
        mission=evaluation.mission,
        instrument=evaluation.instrument,
        level=evaluation.level,
        propid=evaluation.propid,
        obset=evaluation.obset,
        written_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        metadata=evaluation.metadata,
        shared_path=relative_path if shared else None,
    )
