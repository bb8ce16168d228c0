"""Every event a consumer receives is valid against the published schemas, read by a standard JSON Schema validator.

A downstream pipeline written in another language knows Skyport only through ``schemas/v1``: it validates the
envelope with ``cloudevent.json`` and the payload with the schema that ``dataschema`` names. The events here are
the real ones, produced by the real services from real files and published on the real bus, and captured as the
bytes a consumer receives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import pytest
from astropy.io import fits
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from services.monitor.client import ArchiveClient
from services.monitor.dep import evaluate
from skyport.events import EVENT_MODELS, EXCHANGE
from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
from tests.support.flow import REPO, Flow
from tests.support.waiting import eventually

SCHEMAS = REPO / "schemas" / "v1"
BASE_HOST = "skyport.example.org"  # the default schema base URI (SKYPORT_SCHEMA_BASE_URI)


def schema_registry() -> tuple[Registry, dict[str, dict[str, Any]]]:
    """The exported schemas by their ``$id``, as a consumer loads them from the repository."""
    documents = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        document = json.loads(path.read_text())
        documents[document["$id"]] = document
    registry: Registry = Registry().with_resources(
        (schema_id, Resource.from_contents(document)) for schema_id, document in documents.items()
    )
    return registry, documents


@pytest.fixture
async def published(flow: Flow, unique: str) -> AsyncIterator[list[bytes]]:
    """The body of every message published on the flow's exchange, whatever its routing key."""
    connection = await aio_pika.connect_robust(flow.amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"test.{unique}.everything", exclusive=True, auto_delete=True)
    await queue.bind(exchange, "#")
    bodies: list[bytes] = []

    async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        bodies.append(message.body)
        await message.ack()

    await queue.consume(collect)
    yield bodies
    await connection.close()


def rewrite_header(path: Path, **keywords: str) -> None:
    """What a reprocessing does to a calibrated file: a new software version and reference files."""
    with fits.open(path) as hdul:
        for keyword, value in keywords.items():
            hdul[0].header[keyword] = value
        temporary = path.with_name(f".{path.name}.new")
        hdul.writeto(temporary, checksum=True)
    temporary.replace(path)


@pytest.mark.timeout(240)
async def test_every_event_type_validates_against_the_exported_schemas(
    flow: Flow, instruments: InstrumentCatalog, published: list[bytes], unique: str
) -> None:
    await flow.start("receiver", "ingestor", "catalog")
    admin = {"Authorization": f"Bearer {await flow.user_token('boss', admin=True)}"}
    await flow.user_token("observer")
    propid = f"{int(unique, 16) % 9000 + 1000}"
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31, programs={"JWST": [propid]})
    uncal = sim.write_file("NIRCAM", "uncal", size_bytes=60_000)
    cal = sim.write_file("NIRCAM", "cal", size_bytes=60_000)

    async def send(relative_path: str, **tampered: str) -> None:
        """What the monitor does with a file: DEP's manifest, then the upload (through its own client)."""
        size = (flow.watch_root / relative_path).stat().st_size
        manifest = await asyncio.to_thread(evaluate, instruments, flow.watch_root, relative_path, size, shared=False)
        async with aiohttp.ClientSession() as session:
            client = ArchiveClient(f"http://127.0.0.1:{flow.receiver_port}", flow.token, session)
            await client.send(manifest.model_copy(update=tampered), flow.watch_root / relative_path)

    def seen(event_type: str) -> list[dict[str, Any]]:
        return [event for event in map(json.loads, published) if event["type"] == event_type]

    # transfer.received, file.archived, ingest.completed, dataset.first and dataset.new
    await send(cal.relative_path)
    await eventually(lambda: bool(seen("dataset.new")), timeout=60, what="dataset.new of the calibrated file")
    # dataset.repro: the pipeline ran again with a newer build and new reference files
    rewrite_header(cal.path, CAL_VER="1.15.2", R_FLAT="crds://jwst_nircam_flat_0456.fits")
    await send(cal.relative_path)
    # ingest.failed: a manifest whose program is not the header's
    await send(uncal.relative_path, propid="99999")
    async with aiohttp.ClientSession() as http:
        base = f"{flow.catalog_url}/v1/programs/JWST/{propid}"
        # access.changed
        async with http.put(f"{base}/members/observer", json={"role": "coi"}, headers=admin) as response:
            assert response.status == 200, await response.text()
        # dataset.public: the program's data released early
        async with http.post(f"{base}/release", json={}, headers=admin) as response:
            assert response.status == 200, await response.text()

    def types() -> set[str]:
        return {event["type"] for event in map(json.loads, published)}

    await eventually(lambda: set(EVENT_MODELS) <= types(), timeout=60, what="every event type published")

    registry, schemas = schema_registry()
    envelope = Draft202012Validator(
        json.loads((SCHEMAS / "cloudevent.json").read_text()),
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    problems = []
    for body in published:
        event = json.loads(body)
        problems += [f"{event['type']} envelope: {error.message}" for error in envelope.iter_errors(event)]
        if (urlsplit(event["dataschema"]).scheme, urlsplit(event["dataschema"]).netloc) != ("https", BASE_HOST):
            problems.append(f"{event['type']} dataschema is not the absolute URI of its schema: {event['dataschema']}")
        payload_schema = schemas.get(event["dataschema"])
        if payload_schema is None:
            problems.append(f"{event['type']} dataschema names no exported schema: {event['dataschema']}")
            continue
        payload = Draft202012Validator(
            payload_schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        problems += [f"{event['type']} data: {error.message}" for error in payload.iter_errors(event["data"])]
    assert problems == []
    assert {schema_id for schema_id in schemas} == {
        f"https://skyport.example.org/schemas/v1/{name.name}" for name in SCHEMAS.glob("*.json")
    }

    # What a reprocessing says, and what the catalog received to say it.
    (repro,) = seen("dataset.repro")
    assert repro["data"]["repro"]["software_version"] == "1.15.2"
    assert "crds://jwst_nircam_flat_0456.fits" in repro["data"]["repro"]["reference_files"]
    assert repro["data"]["repro"]["supersedes_version"] == 1
    first_version = next(e for e in seen("file.archived") if e["data"]["version"] == 1)
    metadata = first_version["data"]["metadata"]
    assert (metadata["software_version"], metadata["calib_level"], metadata["dataproduct_type"]) == (
        "1.14.0",
        2,
        "image",
    )
    assert (metadata["em_min_m"], metadata["em_max_m"]) == (0.6e-6, 5.0e-6)
    (failed,) = seen("ingest.failed")
    assert "99999" in failed["data"]["reason"]
