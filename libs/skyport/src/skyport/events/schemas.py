"""Export the event models as JSON Schema files, the contract that downstream consumers read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skyport.events.envelope import SCHEMA_MAJOR, CloudEvent, EventData
from skyport.events.models import EVENT_MODELS

ENVELOPE_FILE = "cloudevent.json"


def _document(schema: dict[str, Any], schema_id: str) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render_schemas() -> dict[str, str]:
    """File name → JSON text for every event payload, and the envelope."""
    files = {
        f"{event_type}.json": _document(
            model.model_json_schema(mode="validation"), f"schemas/{SCHEMA_MAJOR}/{event_type}.json"
        )
        for event_type, model in sorted(EVENT_MODELS.items())
    }
    files[ENVELOPE_FILE] = _document(
        CloudEvent[EventData].model_json_schema(mode="validation"), f"schemas/{SCHEMA_MAJOR}/{ENVELOPE_FILE}"
    )
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
