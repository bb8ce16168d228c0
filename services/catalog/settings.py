"""The catalog's settings: its public address, how much it catalogues at once, and when it releases data."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from skyport.settings import CommonSettings


class CatalogSettings(CommonSettings):
    catalog_public_url: str = Field(
        default="http://localhost:8082",
        description="The catalog API's address as users reach it: download links in dataset events are "
        "<this>/v1/files/<archive ID>?version=N.",
    )
    catalog_host: str = Field(default="0.0.0.0", description="Address of the catalog API.")
    catalog_port: int = Field(default=8082, ge=0, le=65535, description="Port of the catalog API (0: any).")
    storage_dir: Path = Field(
        default=Path("var/archive"),
        description="Archive storage as the ingestor writes it, read for downloads.",
    )
    instruments_dir: Path = Field(
        default=Path("deploy/instruments"),
        description="The instrument configuration, read for each mission's observing night ([night] in mission.toml).",
    )
    catalog_batch_size: int = Field(
        default=200,
        ge=1,
        le=5000,
        description="file.archived events catalogued together, in one transaction (1: one event per transaction, "
        "without batching).",
    )
    catalog_batch_wait: float = Field(
        default=0.05,
        ge=0,
        lt=60,
        description="Seconds a batch waits for more events after its first before it is catalogued as it stands.",
    )
    catalog_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Batches catalogued at once, each in a transaction of its own; the queue's prefetch is this "
        "times catalog_batch_size, so that the next batch fills while one is catalogued.",
    )
    release_interval: float = Field(
        default=60.0, gt=0, description="Seconds between two looks for data whose release date has passed."
    )
    release_batch: int = Field(
        default=5000, ge=1, description="Products made public per transaction by the release scheduler."
    )
    public_event_max_files: int = Field(
        default=1000,
        ge=1,
        description="Files listed in one dataset.public event; a program and level with more is announced "
        "in several events of this many files.",
    )
    calib_levels: dict[str, int] = Field(
        default_factory=dict,
        description='ObsCore calib_level of a mission\'s level, as JSON {"<MISSION>/<level>": n}, where the '
        "default rule (the level's leading digit, at least 1: KECK 0 -> 1, JWST 2b -> 2) does not fit.",
    )

    @field_validator("catalog_public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"catalog_public_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/")

    @field_validator("calib_levels")
    @classmethod
    def _calib_levels(cls, value: dict[str, int]) -> dict[str, int]:
        for key, level in value.items():
            if "/" not in key or not 0 <= level <= 4:
                raise ValueError(f"calib_levels entries are '<MISSION>/<level>': 0..4, not {key!r}: {level!r}")
        return {f"{key.split('/', 1)[0].upper()}/{key.split('/', 1)[1]}": level for key, level in value.items()}
