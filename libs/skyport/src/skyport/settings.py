"""Settings shared by every Skyport service, read from ``SKYPORT_*`` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from skyport.events.envelope import DEFAULT_SCHEMA_BASE, check_schema_base


class CommonSettings(BaseSettings):
    """What every service needs: where the bus and the database are, how to log, where to serve health.

    Each service subclasses this with its own fields; all of them share the ``SKYPORT_`` prefix so that
    one environment configures a whole deployment.
    """

    model_config = SettingsConfigDict(env_prefix="SKYPORT_", extra="ignore", frozen=True)

    bus_url: str = Field(
        default="amqp://guest:guest@localhost:5672/",
        description="The event bus: an AMQP URL (amqp://user:password@host:port/vhost) or memory:// "
        "for the in-process bus of the embedded mode.",
    )
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/skyport",
        description="PostgreSQL URL, or embedded:///path/to/folder to start an embedded PostgreSQL "
        "(pgserver) that keeps its data in that folder.",
    )
    log_format: Literal["json", "console"] = Field(
        default="json", description="json: one JSON object per line (production); console: readable lines."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="The lowest level that is logged."
    )
    health_host: str = Field(default="0.0.0.0", description="Address of the /healthz, /readyz, /metrics server.")
    health_port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        description="Port of the /healthz, /readyz, /metrics server (0: any free port).",
    )
    shutdown_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds that in-flight work may take to finish after SIGTERM before it is returned to its queue.",
    )
    migrate_on_start: bool = Field(
        default=False,
        description="Apply pending database migrations at start instead of refusing to start "
        "(the embedded mode sets it; production runs `skyport migrate` as a release step).",
    )
    publish_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a publish may wait for the broker's confirm before it fails."
    )
    schema_base_uri: str = Field(
        default=DEFAULT_SCHEMA_BASE,
        description="Absolute URI under which the event schemas (schemas/v1) are published; every event's "
        "dataschema is this base and the schema's file name.",
    )

    @field_validator("schema_base_uri")
    @classmethod
    def _absolute_schema_base(cls, value: str) -> str:
        return check_schema_base(value)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class SettingsError(ValueError):
    """A setting that is missing or wrong, said in one line per variable; the operator's to fix, not a bug."""


def load_settings(
    settings_class: type[SettingsT],
    defaults: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> SettingsT:
    """``settings_class`` read from the environment; :class:`SettingsError` names each variable at fault.

    A composition such as the demo chooses its own values without writing into ``os.environ``: ``defaults`` (by
    field name) take the place of the class's defaults, so what the caller set in the environment still wins;
    ``overrides`` win even over the environment (what the composition made itself, such as a fresh credential).
    pydantic-settings ranks arguments above the environment, hence the environment is read first here and laid
    over ``defaults``.
    """
    values: dict[str, Any] = {}
    if defaults or overrides:
        unknown = sorted((set(defaults or {}) | set(overrides or {})) - set(settings_class.model_fields))
        if unknown:
            raise ValueError(f"{settings_class.__name__} has no setting {', '.join(unknown)}")
        values = {**(defaults or {}), **EnvSettingsSource(settings_class)(), **(overrides or {})}
    try:
        return settings_class(**values)
    except ValidationError as exc:
        prefix = str(settings_class.model_config.get("env_prefix") or "")
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = (prefix + field).upper() if field else "(settings)"
            problem = f"{name}: {error['msg']}"
            described = settings_class.model_fields.get(field)
            if error["type"] == "missing" and described is not None and described.description:
                what = described.description.removesuffix("Required.").strip().rstrip(".")
                problem += f" ({what})"  # what to set it to
            problems.append(problem)
        raise SettingsError(f"{settings_class.__name__}: " + "; ".join(problems)) from None


def required_secret(value: SecretStr) -> SecretStr:
    """For a field validator: a credential that is required is not the empty string (``${TOKEN:-}`` in compose)."""
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value
