"""The notifier's settings: the SMTP server, the catalog it asks, its public address and its signing secret."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from skyport.settings import CommonSettings, required_secret


class NotifierSettings(CommonSettings):
    notifier_host: str = Field(default="0.0.0.0", description="Address of the notifier's HTTP API.")
    notifier_port: int = Field(default=8084, ge=0, le=65535, description="Port of the notifier's HTTP API (0: any).")
    notifier_public_url: str = Field(
        description="The notifier's API as people reach it (through the gateway's one address in production): "
        "unsubscribe and download-everything links in emails start with it. Required.",
    )
    notifier_page_url: str | None = Field(
        default=None,
        description="The web page as people reach it, for the 'edit this subscription' link of each email "
        "(<page>/#/subscriptions/<id>). Default: notifier_public_url, the gateway's one address that serves both.",
    )
    notifier_catalog_url: str = Field(
        default="http://localhost:8082", description="The catalog API as the notifier reaches it."
    )
    notifier_catalog_token: SecretStr = Field(
        description="An administrator's catalog token: with it the notifier asks the catalog, when a notice is "
        "sent, what its subscriber may see (POST /v1/access/visible) and reads programs' titles "
        "(skyport catalog add-user notifier --admin; "
        "skyport catalog issue-token notifier). Required.",
    )
    notifier_signing_secret: SecretStr = Field(
        description="The secret of the HMAC that signs one-click unsubscribe and download links (at least 32 "
        "characters; changing it invalidates the links of emails already sent). Required.",
    )
    smtp_host: str = Field(description="The SMTP server that takes the notifier's email. Required.")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade a plain connection (port 587); tls: TLS from the start (port 465); "
        "none: plain text (a local relay or a test server only).",
    )
    smtp_username: str | None = Field(default=None, description="SMTP login, when the server asks for one.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password, with smtp_username.")
    smtp_timeout: float = Field(default=30.0, gt=0, description="Seconds an SMTP conversation may take.")
    mail_from: str = Field(
        default="Skyport <skyport@localhost>", description="The From address of the notifier's email."
    )
    instruments_dir: Path = Field(
        default=Path("deploy/instruments"),
        description="The instrument configuration, read for each mission's level order ('level X or above').",
    )
    notifier_batch_size: int = Field(
        default=200, ge=1, le=5000, description="Dataset events matched together, in one transaction."
    )
    notifier_batch_wait: float = Field(
        default=0.05, ge=0, lt=60, description="Seconds a batch of events waits for more after its first."
    )
    notifier_poll_interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between two looks for notices that are due."
    )
    notifier_coalesce_window: float = Field(
        default=60.0,
        ge=0,
        description="Seconds after a fast notice during which further events of the same subscription are folded "
        "into the next notice instead of each making an email.",
    )
    notifier_fast_per_hour: int = Field(
        default=6,
        ge=1,
        description="Fast notices one subscription sends in an hour at most; beyond, what comes waits and goes "
        "out as one summary.",
    )
    notifier_listed_files: int = Field(
        default=50,
        ge=1,
        description="Files an email lists one by one; beyond, it is a summary (counts, and every file in the "
        "JSON attachment and the download-everything link).",
    )
    notifier_max_attempts: int = Field(
        default=8, ge=1, description="Attempts at a notice whose SMTP failures are temporary before it is failed."
    )

    notifier_webhook_allow_http: bool = Field(
        default=False,
        description="Let webhook receivers be plain http:// URLs (development and tests only); otherwise https only.",
    )
    notifier_webhook_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds a webhook receiver has to answer one POST."
    )

    _token = field_validator("notifier_catalog_token")(required_secret)

    @field_validator("notifier_signing_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("notifier_public_url", "notifier_catalog_url", "notifier_page_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        return value.rstrip("/")

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _credentials_together(self) -> Self:
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("smtp_username and smtp_password come together or not at all")
        return self
