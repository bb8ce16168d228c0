"""Export the event models as JSON Schema files, the contract that downstream consumers read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skyport.events.envelope import CloudEvent, EventData, schema_base
from skyport.events.models import EVENT_MODELS

ENVELOPE_FILE = "cloudevent.json"

# CloudEvents 1.0: extension attribute names are lower-case letters and digits, at most 20 characters (the
# specification advises it); their values are strings, numbers or booleans.
_EXTENSION_NAME = "^[a-z0-9]{1,20}$"


def _document(schema: dict[str, Any], schema_id: str) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def envelope_schema() -> dict[str, Any]:
    """The JSON Schema of any Skyport event's envelope: CloudEvents 1.0 structured JSON, whatever its ``data``.

    ``data`` is checked against the schema that ``dataschema`` names, not here: a consumer built on an older
    minor version must still accept an event type added later, and extension attributes it does not know.
    """
    schema = CloudEvent[EventData].model_json_schema(mode="validation")
    schema.pop("$defs", None)
    schema["title"] = "CloudEvent"
    schema["description"] = (
        "One Skyport event, as CloudEvents 1.0 structured JSON. data is validated by the schema named in "
        "dataschema (one file per event type beside this one)."
    )
    schema["properties"]["data"] = {
        "description": "The event's payload: a JSON object valid against the schema that dataschema names.",
        "type": "object",
    }
    schema["required"] = ["specversion", *(name for name in schema["required"] if name != "specversion")]
    schema["propertyNames"] = {"pattern": _EXTENSION_NAME}
    schema["additionalProperties"] = {
        "description": "An extension attribute.",
        "type": ["string", "number", "boolean"],
    }
    return schema


def render_schemas() -> dict[str, str]:
    """File name → JSON text for every event payload, and the envelope; each ``$id`` is the file's absolute URI."""
    base = schema_base()
    files = {
        f"{event_type}.json": _document(model.model_json_schema(mode="validation"), model.dataschema())
        for event_type, model in sorted(EVENT_MODELS.items())
    }
    files[ENVELOPE_FILE] = _document(envelope_schema(), f"{base}{ENVELOPE_FILE}")
    return files


def export_schemas(directory: Path) -> list[Path]:
    """Write the schema files into ``directory`` (``schemas/v1``), removing ones no model produces any more."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_schemas()
    for stale in directory.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def schema_differences(directory: Path) -> list[str]:
    """What differs between the files in ``directory`` and the models: empty when they agree."""
    rendered = render_schemas()
    problems = []
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    for name, text in rendered.items():
        path = directory / name
        if name not in present:
            problems.append(f"{path} is missing")
        elif path.read_text() != text:
            problems.append(f"{path} differs from the model")
    problems.extend(f"{directory / name} has no model" for name in sorted(present - rendered.keys()))
    return problems
