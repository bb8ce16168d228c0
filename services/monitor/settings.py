"""The monitor's settings: what it watches, where it keeps its journal, and where the archive is."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from skyport.settings import CommonSettings, required_secret


class MonitorJournalSettings(CommonSettings):
    """What the monitor's commands (``skyport monitor status``, ``retry``, ``closed``) need: the watched tree and
    the journal, not the archive's address or credential."""

    watch_root: Path = Field(
        default=Path("var/observatory"),
        description="The instruments' output tree; the instrument configurations name folders below it.",
    )
    instruments_dir: Path = Field(
        default=Path("deploy/instruments"), description="The instrument configuration files (one TOML each)."
    )
    journal_path: Path = Field(
        default=Path("var/monitor/journal.sqlite3"),
        description="The monitor's journal (SQLite on local disk): every file from detection to ingestion.",
    )


class MonitorSettings(MonitorJournalSettings):
    receiver_url: str = Field(
        description="The archive's transfer API (the receiver), e.g. https://archive.example.org:8081. Required."
    )
    site_token: SecretStr = Field(
        description="This site's credential for the transfer API (skyport receiver add-site <site>). Required."
    )
    shared_filesystem: bool = Field(
        default=False,
        description="Send only the manifest: the receiver reads the file from a shared mount of watch_root.",
    )
    dep_concurrency: int = Field(default=2, ge=1, description="Files evaluated (validated, hashed) at once.")
    dep_processes: bool = Field(
        default=True,
        description="Evaluate in dep_concurrency worker processes, off the interpreter the event loop runs in "
        "(else in threads of the monitor's own process).",
    )
    upload_concurrency: int = Field(default=4, ge=1, description="Files uploaded at once.")
    incomplete_timeout: float = Field(
        default=60.0,
        gt=0,
        description="A file its completion rule calls finished that never looks like whole FITS, but has not "
        "changed for this long, is evaluated anyway, so a truncated file is reported instead of waited for. "
        "When a file is finished is the instrument's completion rule (its configuration's [completion]).",
    )
    rescan_interval: float = Field(
        default=30.0, gt=0, description="Seconds between full rescans of watch_root, the safety net under inotify."
    )
    follow_interval: float = Field(default=0.5, gt=0, description="Seconds between status checks of uploaded files.")
    max_retry_delay: float = Field(default=60.0, gt=0, description="Longest back-off between two attempts.")

    _site_token = field_validator("site_token")(required_secret)

    @field_validator("receiver_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        return value.rstrip("/")
