"""The receiver's announcement of a staged file, as tests that stand in for the receiver make it."""

from __future__ import annotations

from skyport.events import TransferReceived
from skyport.transfer import Manifest


def transfer_received(manifest: Manifest, transfer_id: str, staged_path: str, site: str = "test") -> TransferReceived:
    """What the receiver says of ``manifest``'s file staged at ``staged_path`` under transfer ``transfer_id``."""
    return TransferReceived(
        transfer_id=transfer_id,
        site=site,
        staged_path=staged_path,
        **manifest.model_dump(include={"archive_id", "mission", "instrument", "level", "propid", "obset"}),
        original_filename=manifest.original_filename,
        size_bytes=manifest.size_bytes,
        sha256=manifest.sha256,
        metadata=manifest.metadata,
        written_at=manifest.written_at,
        replaces=manifest.replaces,
    )
