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
    ingest_concurrency: int = Field(default=4, ge=1, description="Files ingested at once (the queue's prefetch).")
