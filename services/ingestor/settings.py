"""The ingestor's settings: staging, archive storage, the instrument rules, and how much it does at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from skyport.settings import CommonSettings


class IngestorSettings(CommonSettings):
    staging_dir: Path = Field(default=Path("var/staging"), description="The receiver's staging area.")
    storage_dir: Path = Field(
        default=Path("var/archive"),
        description="Archive storage: <mission>/<instrument>/<UT date>/<archive ID>/v<version>/<file name>.",
    )
    instruments_dir: Path = Field(
        default=Path("deploy/instruments"), description="The instrument configuration files (one TOML each)."
    )
    ingest_concurrency: int = Field(
        default=4, ge=1, description="Files (or, with batches, batches of files) ingested at once."
    )
    ingest_batch_size: int = Field(
        default=20,
        ge=1,
        description="Files ingested in one transaction at most, of those waiting in the queue (1: one per "
        "transaction); a failed batch is ingested again one file at a time.",
    )
    scrub_rate: int = Field(
        default=20_000_000,
        ge=0,
        description="Bytes per second at most that the scrubber reads archived files at, to hash them again "
        "(0: no scrubber).",
    )
    scrub_interval: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="Seconds between two scrubs of one archived version (a new version is first scrubbed this long "
        "after it was archived: the receiver's hash proved it then).",
    )
