"""The receiver's settings: where it listens, where it stages files, and its limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from skyport.settings import CommonSettings


class ReceiverSettings(CommonSettings):
    receiver_host: str = Field(default="0.0.0.0", description="Address of the transfer API.")
    receiver_port: int = Field(default=8081, ge=0, le=65535, description="Port of the transfer API (0: any).")
    staging_dir: Path = Field(
        default=Path("var/staging"),
        description="Where uploaded files wait for the ingestor; on the same file system as the archive "
        "storage so that archiving a file is a rename.",
    )
    shared_dir: Path | None = Field(
        default=None,
        description="Shared-filesystem mode: the observatory's files as mounted here; a manifest with a "
        "shared_path is read from below this folder instead of being uploaded.",
    )
    max_upload_bytes: int = Field(default=8 << 30, gt=0, description="Largest file accepted, in bytes.")
    max_concurrent_uploads: int = Field(
        default=8, gt=0, description="Uploads received at once; more are told to retry later (HTTP 503)."
    )
