"""The gateway's settings: where it serves, where the catalog and the notifier are, how patient it is."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from skyport.settings import CommonSettings, required_secret


class GatewaySettings(CommonSettings):
    gateway_host: str = Field(default="0.0.0.0", description="Address of the gateway (page, API, WebSocket).")
    gateway_port: int = Field(default=8083, ge=0, le=65535, description="Port of the gateway (0: any).")
    gateway_public_url: str | None = Field(
        default=None,
        description="The gateway's address as browsers reach it (e.g. https://skyport.example.org behind a TLS "
        "proxy): download and script links in the catalog's answers start with it. Default: the scheme and Host "
        "of each request.",
    )
    gateway_catalog_url: str = Field(
        default="http://localhost:8082", description="The catalog API as the gateway reaches it."
    )
    gateway_notifier_url: str | None = Field(
        default=None,
        description="The notifier API as the gateway reaches it (e.g. http://localhost:8084): the page's "
        "subscriptions and inbox, and the links in the notifier's emails, go through the gateway to it. Unset: "
        "those paths answer 503 (notifications are not configured).",
    )
    gateway_catalog_token: SecretStr = Field(
        description="An administrator's catalog token, with which the gateway follows every change in the catalog "
        "order (skyport catalog add-user gateway --admin; skyport catalog issue-token gateway). Required.",
    )
    gateway_ticket_ttl: float = Field(
        default=30.0, gt=0, le=600, description="Seconds a ticket (single-use browser credential) stays valid."
    )
    gateway_queue_limit: int = Field(
        default=1000,
        ge=10,
        description="Messages that may wait for one WebSocket client; a client further behind is disconnected "
        "(close code 4008) and resumes with its cursor.",
    )
    gateway_heartbeat: float = Field(
        default=15.0, gt=0, description="Seconds between heartbeat messages (and WebSocket pings)."
    )
    gateway_recheck_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between re-checks of connected clients' tokens with the catalog: a revoked token's "
        "streams end (close code 4001) within this time.",
    )
    gateway_poll_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between looks at the catalog when no dataset event came (a safety net: events wake "
        "the gateway at once).",
    )

    _catalog_token = field_validator("gateway_catalog_token")(required_secret)

    @field_validator("gateway_notifier_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``SKYPORT_GATEWAY_NOTIFIER_URL=`` (as compose writes an unset variable) means no notifier."""
        return None if value == "" else value

    @field_validator("gateway_catalog_url", "gateway_public_url", "gateway_notifier_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, not {value!r}")
        return None if value is None else value.rstrip("/")
