"""The CloudEvents 1.0 envelope (structured JSON mode) that carries every Skyport event."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_MAJOR = "v1"
EXCHANGE = "skyport.v1"
CONTENT_TYPE = "application/cloudevents+json"
DEFAULT_SCHEMA_BASE = f"https://skyport.example.org/schemas/{SCHEMA_MAJOR}/"

# Where the exported schemas are published. Process-wide, like the logging configuration: every producer in a
# process stamps the same base into ``dataschema``, and threading it through every event's construction would
# put a deployment detail into every handler. Set once at start from the settings (``schema_base_uri``).
_schema_base = DEFAULT_SCHEMA_BASE


def schema_base() -> str:
    """The absolute URI, ending in ``/``, under which this deployment publishes ``schemas/v1``."""
    return _schema_base


def configure_schema_base(base: str) -> None:
    """Publish ``dataschema`` URIs under ``base`` (absolute, http or https, as CloudEvents 1.0 requires)."""
    global _schema_base
    _schema_base = check_schema_base(base)


def check_schema_base(base: str) -> str:
    """``base`` as a schema base URI (with a trailing ``/``), or ValueError if it is not an absolute http(s) URI."""
    parsed = urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ValueError(f"the schema base URI must be an absolute http(s) URI without query or fragment: {base!r}")
    return base if base.endswith("/") else base + "/"


class EventData(BaseModel):
    """Base of every event payload.

    Producers build payloads with ``extra="forbid"`` so a typo never leaves a process; consumers parse
    with :func:`parse_lenient`, which drops fields they do not know (fields are only ever added within a
    major version).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]

    def routing_key(self) -> str:
        """The routing key on the topic exchange; data events override this with their mission/level/program."""
        return self.event_type

    def subject(self) -> str | None:
        """The CloudEvents subject: what the event is about (an archive ID, a transfer id)."""
        return None

    @classmethod
    def dataschema(cls) -> str:
        """The absolute URI of this payload's JSON Schema (the ``$id`` of its file in ``schemas/v1``)."""
        return f"{schema_base()}{cls.event_type}.json"


D = TypeVar("D", bound=EventData)


class CloudEvent(BaseModel, Generic[D]):
    """One event on the bus, as CloudEvents 1.0 structured JSON.

    ``correlationid`` is a CloudEvents extension attribute: it follows one file through every hop and is
    copied into the AMQP ``correlation_id`` property.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, description="Unique per event; consumers deduplicate on it.")
    source: str = Field(
        min_length=1,
        description="The producing service, e.g. /skyport/catalog.",
        json_schema_extra={"format": "uri-reference"},
    )
    type: str = Field(min_length=1, description="The event type, e.g. dataset.new.")
    time: datetime
    subject: str | None = Field(default=None, min_length=1, description="What the event is about, e.g. an archive ID.")
    dataschema: str = Field(
        description=f"Absolute URI of the JSON Schema of data, e.g. {DEFAULT_SCHEMA_BASE}dataset.new.json.",
        json_schema_extra={"format": "uri"},
    )
    datacontenttype: Literal["application/json"] = "application/json"
    correlationid: str | None = Field(default=None, description="Follows one file through every hop.")
    data: D

    @classmethod
    def create(
        cls,
        data: D,
        *,
        source: str,
        correlation_id: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> CloudEvent[D]:
        """Wrap a payload in a new envelope with a fresh id and the current time."""
        model: type[CloudEvent[D]] = CloudEvent[type(data)]  # type: ignore[misc,assignment]
        return model(
            id=event_id or str(uuid.uuid4()),
            source=source,
            type=data.event_type,
            time=time or datetime.now(UTC),
            subject=data.subject(),
            dataschema=data.dataschema(),
            correlationid=correlation_id,
            data=data,
        )

    def routing_key(self) -> str:
        return self.data.routing_key()

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class InvalidEvent(ValueError):
    """A message that is not a valid event of a known type: it goes to the dead-letter queue at once."""


def parse_lenient(model: type[BaseModel], raw: Any) -> BaseModel:
    """Validate ``raw`` against ``model``, ignoring fields the model does not know.

    The models forbid extra fields (producers must not invent them); a consumer built against an older
    minor version must still accept events that carry newer optional fields. Extra fields are found from
    the validation errors themselves, so nested models are handled too.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        extras = [err["loc"] for err in exc.errors() if err["type"] == "extra_forbidden"]
        if not extras or len(extras) != len(exc.errors()):
            raise
    pruned = _copy_containers(raw)
    for loc in extras:
        _delete_path(pruned, loc)
    return model.model_validate(pruned)


def _copy_containers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_containers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_containers(v) for v in value]
    return value


def _delete_path(tree: Any, loc: tuple[int | str, ...]) -> None:
    node = tree
    for part in loc[:-1]:
        node = node[part]
    if isinstance(node, dict):
        node.pop(loc[-1], None)
