"""Turning bytes from the bus back into typed events, leniently, as a consumer must."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skyport.events.envelope import CloudEvent, EventData, InvalidEvent, parse_lenient
from skyport.events.models import EVENT_MODELS


class _ReceivedEnvelope(BaseModel):
    # Consumers accept CloudEvents extension attributes they do not know.
    model_config = ConfigDict(extra="ignore")

    specversion: str = Field(pattern=r"^1\.")
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: str = "application/json"
    correlationid: str | None = None
    data: dict[str, Any]


@lru_cache(maxsize=256)
def _envelope_class(model: type[EventData]) -> type[CloudEvent[Any]]:
    return CloudEvent[model]  # type: ignore[valid-type]


_TYPE = re.compile(rb'"type"\s*:\s*"([^"]+)"')


def decode_event(body: bytes, models: Mapping[str, type[EventData]] = EVENT_MODELS) -> CloudEvent[Any]:
    """Parse one structured-mode CloudEvent; raise :class:`InvalidEvent` with a readable reason if it is not one.

    The common case, an event exactly as this version of the models writes it, takes one validation pass;
    anything else (extension attributes, newer optional fields, or a bad message) takes the lenient path.
    """
    found = _TYPE.search(body)
    model = models.get(found.group(1).decode()) if found else None
    if model is not None:
        with contextlib.suppress(ValidationError):
            event: CloudEvent[Any] = _envelope_class(model).model_validate_json(body)
            if event.type == model.event_type:
                return event
    return _decode_leniently(body, models)


def _decode_leniently(body: bytes, models: Mapping[str, type[EventData]]) -> CloudEvent[Any]:
    try:
        envelope = _ReceivedEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidEvent(f"not a CloudEvents 1.0 JSON envelope: {_summary(exc)}") from exc
    model = models.get(envelope.type)
    if model is None:
        raise InvalidEvent(f"unknown event type {envelope.type!r}")
    try:
        data = parse_lenient(model, envelope.data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {envelope.type} payload: {_summary(exc)}") from exc
    fields = envelope.model_dump(exclude={"data"})
    fields["dataschema"] = fields["dataschema"] or model.dataschema()
    return _envelope_class(model).model_construct(**fields, data=data)


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
