"""Typed, versioned Skyport events: the CloudEvents envelope, the v1 payloads, routing keys and schemas."""

from skyport.events.envelope import (
    CONTENT_TYPE,
    EXCHANGE,
    CloudEvent,
    EventData,
    InvalidEvent,
    parse_lenient,
)
from skyport.events.models import (
    EVENT_MODELS,
    AccessChanged,
    DatasetEvent,
    DatasetFile,
    DatasetFirst,
    DatasetNew,
    DatasetPublic,
    DatasetRepro,
    FileArchived,
    IngestCompleted,
    IngestFailed,
    ReproInfo,
    TransferReceived,
)
from skyport.events.parsing import decode_event

__all__ = [
    "CONTENT_TYPE",
    "EVENT_MODELS",
    "EXCHANGE",
    "AccessChanged",
    "CloudEvent",
    "DatasetEvent",
    "DatasetFile",
    "DatasetFirst",
    "DatasetNew",
    "DatasetPublic",
    "DatasetRepro",
    "EventData",
    "FileArchived",
    "IngestCompleted",
    "IngestFailed",
    "InvalidEvent",
    "ReproInfo",
    "TransferReceived",
    "decode_event",
    "parse_lenient",
]
