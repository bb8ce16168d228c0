"""The v1 event models: what downstream consumers rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from skyport.events import (
    EVENT_MODELS,
    CloudEvent,
    DatasetFile,
    DatasetNew,
    DatasetPublic,
    DatasetRepro,
    FileArchived,
    InvalidEvent,
    ReproInfo,
    decode_event,
)
from skyport.events.schemas import schema_differences

REPO = Path(__file__).resolve().parents[3]
SHA = "a" * 64


def test_the_message_archive_users_receive_today_is_a_valid_public_event() -> None:
    legacy = json.loads('[{"obsets":["001","002"],"mission":"JWST","propid":"96090","type":"public","level":"2b"}]')
    events = [DatasetPublic.model_validate(item) for item in legacy]
    assert [e.legacy() for e in events] == legacy
    assert events[0].routing_key() == "dataset.public.jwst.2b.96090"


def test_a_dataset_event_cannot_claim_another_type() -> None:
    with pytest.raises(ValidationError):
        DatasetNew.model_validate({"mission": "JWST", "propid": "1011", "level": "2b", "type": "public"})


def test_routing_keys_are_lower_case_and_refuse_words_that_would_change_their_meaning() -> None:
    event = DatasetNew(mission="KECK", propid="2026B_U123", level="0")
    assert event.routing_key() == "dataset.new.keck.0.2026b_u123"
    for bad in ("10.11", "a*", "#", "x y", ""):
        with pytest.raises(ValueError, match="routing-key word"):
            DatasetNew(mission="KECK", propid=bad or "x", level=bad or "?").routing_key()


def test_a_repro_event_carries_files_and_why() -> None:
    repro = DatasetRepro(
        mission="JWST",
        propid="1011",
        level="2b",
        obsets=["002"],
        files=[
            DatasetFile(
                archive_id="jw01011002001_02101_00001_nrcb1_cal",
                version=2,
                size_bytes=1234,
                sha256=SHA,
                url="https://archive.example/v1/files/jw01011002001_02101_00001_nrcb1_cal?version=2",
            )
        ],
        repro=ReproInfo(
            software_version="jwst 1.18.0",
            reference_files=["jwst_nircam_flat_0456.fits"],
            supersedes_version=1,
        ),
    )
    event = CloudEvent.create(repro, source="/skyport/catalog", correlation_id="c-1")
    assert decode_event(event.to_json()) == event
    assert event.dataschema == "https://skyport.example.org/schemas/v1/dataset.repro.json"


def test_producers_cannot_invent_fields_but_consumers_ignore_newer_ones() -> None:
    with pytest.raises(ValidationError):
        DatasetNew.model_validate({"mission": "JWST", "propid": "1", "level": "1b", "type": "new", "colour": "red"})
    event = CloudEvent.create(DatasetNew(mission="JWST", propid="1", level="1b"), source="/skyport/catalog")
    document = json.loads(event.to_json())
    document["newextension"] = "from a later release"
    document["data"]["added_in_v1_7"] = {"any": "thing"}
    document["data"]["files"] = [
        {
            "archive_id": "X",
            "version": 1,
            "size_bytes": 1,
            "sha256": SHA,
            "url": "https://a.example/x",
            "new": 1,
        }
    ]
    decoded = decode_event(json.dumps(document).encode())
    assert decoded.data.files[0].archive_id == "X"
    assert decoded.id == event.id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not a CloudEvents 1.0 JSON envelope"),
        (b'{"specversion": "0.3"}', "specversion"),
        (
            b'{"specversion":"1.0","id":"1","source":"/x","type":"nope","time":"2026-01-01T00:00:00Z","data":{}}',
            "unknown event type 'nope'",
        ),
        (
            b'{"specversion":"1.0","id":"1","source":"/x","type":"file.archived","time":"2026-01-01T00:00:00Z",'
            b'"data":{"archive_id":"X"}}',
            "invalid file.archived payload: version: Field required",
        ),
    ],
)
def test_an_invalid_message_is_rejected_with_a_readable_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_event(body)


def test_every_event_type_has_its_model_and_its_schema_file() -> None:
    assert set(EVENT_MODELS) == {
        "transfer.received",
        "file.archived",
        "ingest.completed",
        "ingest.failed",
        "dataset.new",
        "dataset.first",
        "dataset.repro",
        "dataset.public",
        "access.changed",
    }
    assert FileArchived.dataschema() == "https://skyport.example.org/schemas/v1/file.archived.json"


def test_the_exported_schemas_match_the_models() -> None:
    """Fails when a model changed and `make schemas` was not run (or a schema file was edited by hand)."""
    assert schema_differences(REPO / "schemas" / "v1") == []


def test_schema_differences_reports_an_edited_file(tmp_path: Path) -> None:
    from skyport.events.schemas import export_schemas

    export_schemas(tmp_path)
    (tmp_path / "dataset.new.json").write_text("{}")
    (tmp_path / "dataset.old.json").write_text("{}")
    assert schema_differences(tmp_path) == [
        f"{tmp_path}/dataset.new.json differs from the model",
        f"{tmp_path}/dataset.old.json has no model",
    ]


def test_dataschema_is_an_absolute_uri_under_a_configurable_base() -> None:
    from skyport.events import configure_schema_base, schema_base
    from skyport.settings import CommonSettings

    settings = CommonSettings(schema_base_uri="https://archive.example/skyport/schemas/v1")
    assert settings.schema_base_uri == "https://archive.example/skyport/schemas/v1/"
    for relative in ("schemas/v1/", "/schemas/v1/", "ftp://archive.example/schemas/"):
        with pytest.raises(ValidationError, match="absolute http"):
            CommonSettings(schema_base_uri=relative)
    default = schema_base()
    configure_schema_base(settings.schema_base_uri)
    try:
        event = CloudEvent.create(DatasetNew(mission="JWST", propid="1", level="1b"), source="/skyport/catalog")
        assert event.dataschema == "https://archive.example/skyport/schemas/v1/dataset.new.json"
    finally:
        configure_schema_base(default)


def test_the_file_archived_schema_describes_the_metadata_field_by_field() -> None:
    schema = json.loads((REPO / "schemas" / "v1" / "file.archived.json").read_text())
    assert schema["$id"] == "https://skyport.example.org/schemas/v1/file.archived.json"
    metadata = schema["$defs"]["HeaderMetadata"]["properties"]
    types = {name: [option.get("type") for option in field.get("anyOf", [field])] for name, field in metadata.items()}
    assert types["ra_deg"] == ["number", "null"]
    assert types["observed_at"] == ["string", "null"]
    assert metadata["observed_at"]["anyOf"][0]["format"] == "date-time"
    assert types["calib_level"] == ["integer", "null"]
    assert types["filters"] == ["array"]
    assert {"target_name", "exptime_s", "em_min_m", "em_max_m", "software_version", "reference_files"} <= set(types)
    assert metadata["header"]["additionalProperties"]["anyOf"] == [
        {"type": t} for t in ("string", "integer", "number", "boolean", "null")
    ]


def test_the_envelope_schema_takes_any_payload_and_extensions_but_not_a_bad_envelope() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "schemas" / "v1" / "cloudevent.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    event = json.loads(
        CloudEvent.create(DatasetNew(mission="JWST", propid="1", level="1b"), source="/skyport/catalog").to_json()
    )
    later = {**event, "type": "association.new", "data": {"from_v1_9": True}, "traceparent": "00-ab-cd-01"}
    assert list(validator.iter_errors(event)) == []
    assert list(validator.iter_errors(later)) == []  # a newer event type, a newer extension attribute
    for broken in ({**event, "specversion": "0.3"}, {**event, "data": []}, {**event, "Bad-Name": "x"}):
        assert list(validator.iter_errors(broken)) != []
    missing_id = {k: v for k, v in event.items() if k != "id"}
    assert list(validator.iter_errors(missing_id)) != []
