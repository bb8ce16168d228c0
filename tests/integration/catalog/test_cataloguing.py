"""Cataloguing on the real RabbitMQ and PostgreSQL: file.archived in, products and dataset events out."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.catalog.app import service as catalog_service
from services.catalog.cataloguing import CatalogueOutcome, Cataloguer, InvalidProduct
from services.catalog.releases import release_due
from services.catalog.settings import CatalogSettings
from services.catalog.sky import angular_distance, cone
from services.catalog.storage.products import ProductStore
from services.catalog.storage.sql import Params, cone_condition
from skyport.bus import Bus, OutgoingMessage
from skyport.bus.base import utcnow
from skyport.db import LIBRARY_MIGRATIONS, Database, Migrator, OutboxRelay
from skyport.events import CloudEvent, FileArchived, ReplacedContent
from tests.integration.skyport.test_outbox import CrashAfterPublish, CrashBeforePublish
from tests.support.catalog import (
    FAR_FUTURE,
    PUBLIC_URL,
    CatalogInProcess,
    Received,
    archived,
    catalog_database,
    event_of,
    sha256_of,
)
from tests.support.waiting import eventually


@pytest.fixture
async def db(database_url: str, unique: str) -> AsyncIterator[Database]:
    async with catalog_database(database_url, f"catalog_{unique}") as db:
        yield db


@pytest.fixture
async def catalog(db: Database, bus: Bus, unique: str) -> AsyncIterator[CatalogInProcess]:
    catalog = CatalogInProcess(db, bus, unique)
    yield catalog
    await catalog.close()


def files_of(event: CloudEvent[Any]) -> list[tuple[str, int]]:
    return [(f.archive_id, f.version) for f in event.data.files]


async def catalogue_directly(db: Database, *files: FileArchived, cataloguer: Cataloguer | None = None) -> None:
    cataloguer = cataloguer or Cataloguer(PUBLIC_URL)
    for data in files:
        async with db.transaction() as conn:
            await cataloguer.catalogue(conn, data)


# --- products ----------------------------------------------------------------------------------------


async def test_an_archived_file_becomes_a_product_described_in_obscore_terms(db: Database, unique: str) -> None:
    data = archived(f"HI.{unique}.1", propid=f"P{unique}", ra=299.868, dec=22.71)

    await catalogue_directly(db, data)

    row = await db.pool.fetchrow("SELECT * FROM products WHERE archive_id = $1", data.archive_id)
    assert row is not None
    assert (row["mission"], row["propid"], row["level"], row["version"]) == ("KECK", f"P{unique}", "0", 1)
    assert (row["obs_collection"], row["obs_id"], row["instrument_name"]) == ("KECK", data.archive_id, "HIRES")
    assert (row["s_ra"], row["s_dec"], row["target_name"]) == (299.868, 22.71, "HD 189733")
    assert row["healpix"] is not None
    assert row["t_min"] == pytest.approx(61114.34170, abs=1e-5)  # 2026-03-15T08:12:03Z in MJD
    assert row["t_max"] - row["t_min"] == pytest.approx(600 / 86400)
    assert (row["t_exptime"], row["calib_level"], row["access_format"]) == (600.0, 1, "application/fits")
    assert row["access_estsize"] == 1954  # kilobytes, rounded up
    assert row["release_date"] == FAR_FUTURE
    assert row["public_since"] is None
    assert json.loads(row["header"]) == {"FRAMENO": 12, "DECKNAME": "C2", "AIRMASS": 1.12}
    async with db.pool.acquire() as conn:
        versions = await ProductStore(conn).versions(data.archive_id)
    assert [(v.version, v.sha256, v.size_bytes, v.storage_path) for v in versions] == [
        (1, data.sha256, data.size_bytes, data.storage_path)
    ]
    program = await db.pool.fetchrow("SELECT * FROM programs WHERE propid = $1", f"P{unique}")
    assert program is not None  # created on the fly, with no PI
    assert program["first_data_at"] is not None
    assert await db.pool.fetchval("SELECT count(*) FROM program_members") == 0


async def test_the_first_file_of_a_program_gives_first_and_new(catalog: CatalogInProcess, unique: str) -> None:
    propid = f"P{unique}"
    received = await catalog.listen(propid)
    await catalog.start()
    data = archived(f"HI.{unique}.1", propid=propid)

    sent = await catalog.publish(data)

    await eventually(lambda: len(received.unique()) == 2, what="dataset.first and dataset.new")
    first, new = received.unique()  # one subject (the program): published in commit order
    assert (first.type, new.type) == ("dataset.first", "dataset.new")
    assert first.routing_key() == f"dataset.first.keck.0.p{unique}"
    for event in (first, new):
        assert (event.data.mission, event.data.propid, event.data.level) == ("KECK", propid, "0")
        assert event.correlationid == sent.correlationid
        (file,) = event.data.files
        assert (file.archive_id, file.version, file.size_bytes, file.sha256) == (
            data.archive_id,
            1,
            data.size_bytes,
            data.sha256,
        )
        assert str(file.url) == f"{PUBLIC_URL}/v1/files/{data.archive_id}?version=1"


async def test_a_second_archive_id_gives_new_only(catalog: CatalogInProcess, unique: str) -> None:
    propid = f"P{unique}"
    received = await catalog.listen(propid)
    await catalog.start()
    await catalog.publish(archived(f"HI.{unique}.1", propid=propid, obset="001"))
    await eventually(lambda: len(received.unique()) == 2, what="the first file's events")

    await catalog.publish(archived(f"HI.{unique}.2", propid=propid, obset="002"))

    await eventually(lambda: len(received.unique()) == 3, what="the second file's event")
    third = received.unique()[2]
    assert third.type == "dataset.new"
    assert (files_of(third), third.data.obsets) == ([(f"HI.{unique}.2", 1)], ["002"])
    assert len(received.of_type("dataset.first")) == 1


async def test_a_new_version_gives_repro_with_the_superseded_version(catalog: CatalogInProcess, unique: str) -> None:
    propid = f"P{unique}"
    received = await catalog.listen(propid)
    await catalog.start()
    archive_id = f"jw{unique}_cal"
    await catalog.publish(archived(archive_id, propid=propid, mission="JWST", instrument="NIRCAM", level="2b"))
    await eventually(lambda: len(received.unique()) == 2, what="version 1's events")

    await catalog.publish(
        archived(
            archive_id,
            propid=propid,
            mission="JWST",
            instrument="NIRCAM",
            level="2b",
            version=2,
            software_version="1.14.1",
            reference_files=["jwst_nircam_flat_0312.fits", "jwst_1242.pmap"],
        )
    )

    await eventually(lambda: len(received.of_type("dataset.repro")) == 1, what="dataset.repro")
    (repro,) = received.of_type("dataset.repro")
    assert repro.routing_key() == f"dataset.repro.jwst.2b.p{unique}"
    assert files_of(repro) == [(archive_id, 2)]
    assert str(repro.data.files[0].url).endswith(f"/v1/files/{archive_id}?version=2")
    assert repro.data.repro.supersedes_version == 1
    assert repro.data.repro.software_version == "1.14.1"
    assert repro.data.repro.reference_files == ["jwst_nircam_flat_0312.fits", "jwst_1242.pmap"]
    async with catalog.db.pool.acquire() as conn:
        assert [v.version for v in await ProductStore(conn).versions(archive_id)] == [1, 2]
        current = await ProductStore(conn).current(archive_id)
    assert current is not None
    assert current.version == 2
    assert len(received.of_type("dataset.new")) == 1


async def test_the_same_event_twice_changes_nothing(catalog: CatalogInProcess, unique: str) -> None:
    propid = f"P{unique}"
    received = await catalog.listen(propid)
    await catalog.start()
    data = archived(f"HI.{unique}.1", propid=propid)
    event = event_of(data)

    await catalog.publish(event)
    await catalog.publish(event)  # redelivered: the same event id
    await catalog.publish(event_of(data))  # emitted again by the ingestor: a new id, the same version
    await eventually(lambda: _equals(catalog.handled(), 2), what="both event ids handled")
    await eventually(lambda: _equals(catalog.unsent(), 0), what="the outbox drained")

    assert await catalog.db.pool.fetchval("SELECT count(*) FROM products") == 1
    assert await catalog.db.pool.fetchval("SELECT count(*) FROM product_versions") == 1
    assert await catalog.db.pool.fetchval("SELECT count(*) FROM outbox") == 2  # first and new, once
    assert sorted(e.type for e in received.unique()) == ["dataset.first", "dataset.new"]


async def test_a_malformed_file_archived_goes_to_dead_letters_with_the_reason(
    catalog: CatalogInProcess, bus: Bus, unique: str
) -> None:
    await catalog.start(relay=False)
    propid = f"P{unique}"
    good = archived(f"HI.{unique}.1", propid=propid)
    await catalog.publish(good)
    await eventually(lambda: _equals(catalog.handled(), 1), what="the good file catalogued")
    outbox_before = await catalog.outbox_ids()

    missing_checksum = event_of(archived(f"HI.{unique}.2", propid=propid)).model_dump(mode="json")
    del missing_checksum["data"]["sha256"]
    impossible_position = event_of(archived(f"HI.{unique}.3", propid=propid)).model_dump(mode="json")
    impossible_position["data"]["metadata"]["dec_deg"] = 123.0
    other_checksum = event_of(archived(good.archive_id, propid=propid, sha256=sha256_of("other bytes")))
    bad_program = event_of(archived(f"HI.{unique}.4", propid="2026A.U123"))
    for document in (missing_checksum, impossible_position):
        await bus.publish_message(
            OutgoingMessage(catalog.file_key, json.dumps(document).encode(), document["id"], "file.archived", utcnow())
        )
    for event in (other_checksum, bad_program):
        await catalog.publish(event)

    expected = {
        missing_checksum["id"]: "invalid file.archived payload: sha256: Field required",
        impossible_position["id"]: "invalid file.archived payload: metadata.dec_deg: Input should be less",
        other_checksum.id: f"rejected by handler: {good.archive_id} version 1 is catalogued with sha256",
        bad_program.id: "rejected by handler: program '2026A.U123'",
    }
    try:
        letters = {m: await _dead_letter(bus, m) for m in expected}
        for message_id, reason in expected.items():
            assert letters[message_id].reason.startswith(reason), letters[message_id].reason
            assert letters[message_id].queue == f"test.{unique}.catalog"
    finally:
        await bus.drop_dead_letters(set(expected))
    assert await catalog.db.pool.fetchval("SELECT count(*) FROM products") == 1
    assert await catalog.db.pool.fetchval("SELECT count(*) FROM product_versions") == 1
    assert await catalog.outbox_ids() == outbox_before
    assert await catalog.handled() == 1


# --- batches: many files per transaction, the same outcome as one by one ---------------------------------


async def test_a_batch_holding_versions_1_and_2_of_an_archive_id_gives_new_then_repro(
    db: Database, unique: str
) -> None:
    archive_id = f"jw{unique}_cal"
    v1 = archived(archive_id, propid=f"P{unique}", mission="JWST", instrument="NIRCAM", level="2b")
    v2 = archived(archive_id, propid=f"P{unique}", mission="JWST", instrument="NIRCAM", level="2b", version=2)

    async with db.transaction() as conn:
        results = await Cataloguer(PUBLIC_URL).catalogue_batch(conn, [(v2, "c2"), (v1, "c1")])

    assert [(r.outcome, r.version) for r in results] == [(CatalogueOutcome.NEW, 1), (CatalogueOutcome.REPRO, 2)]
    assert [e.type for e in results[0].events] == ["dataset.first", "dataset.new"]
    (repro,) = results[1].events
    assert (repro.type, repro.data.repro.supersedes_version, repro.correlationid) == ("dataset.repro", 1, "c2")
    row = await db.pool.fetchrow("SELECT * FROM products WHERE archive_id = $1", archive_id)
    assert row is not None
    assert (row["version"], row["first_archived_at"], row["archived_at"]) == (2, v1.archived_at, v2.archived_at)
    versions = await db.pool.fetch(
        "SELECT version, supersedes_version, sha256 FROM product_versions WHERE archive_id = $1 ORDER BY version",
        archive_id,
    )
    assert [tuple(v) for v in versions] == [(1, None, v1.sha256), (2, 1, v2.sha256)]
    outbox = await db.pool.fetch("SELECT event_type FROM outbox ORDER BY id")
    assert [r["event_type"] for r in outbox] == ["dataset.first", "dataset.new", "dataset.repro"]


async def test_a_batch_gives_the_catalog_and_events_the_files_give_one_by_one(
    db: Database, database_url: str, unique: str
) -> None:
    known, fresh, past = f"K{unique}", f"N{unique}", date(2020, 1, 1)
    before = [
        archived(f"HI.{unique}.x", propid=known),
        archived(f"HI.{unique}.late", propid=known, version=3),
        archived(f"HI.{unique}.dup", propid=known),
    ]
    batch = [
        archived(f"HI.{unique}.x", propid=known, version=3, software_version="2.0"),
        archived(f"HI.{unique}.x", propid=known, version=2, software_version="1.9", reference_files=["flat.fits"]),
        archived(f"HI.{unique}.late", propid=known, version=2),  # older than the current version 3
        archived(f"HI.{unique}.dup", propid=known),  # catalogued already, same checksum
        archived(f"HI.{unique}.a", propid=fresh, obset="001"),  # first data of a new program
        archived(f"HI.{unique}.b", propid=fresh, obset="002", level="1"),
        archived(f"HI.{unique}.old", propid=fresh, release_date=past),  # public at once ...
        archived(f"HI.{unique}.old", propid=fresh, release_date=date(2099, 1, 1), version=2),  # ... and stays so
        archived(f"HI.{unique}.twice", propid=fresh),
        archived(f"HI.{unique}.twice", propid=fresh),  # emitted twice by the ingestor
    ]
    random.Random(unique).shuffle(batch)
    cataloguer = Cataloguer(PUBLIC_URL, today=lambda: date(2026, 6, 1))
    async with catalog_database(database_url, f"catalog_{unique}_one_by_one") as one_by_one:
        for target in (db, one_by_one):
            await catalogue_directly(target, *before, cataloguer=cataloguer)

        async with db.transaction() as conn:
            results = await cataloguer.catalogue_batch(conn, [(data, None) for data in batch])
        in_order = sorted(batch, key=lambda data: (data.archive_id, data.version))
        await catalogue_directly(one_by_one, *in_order, cataloguer=cataloguer)

        assert Counter(r.outcome for r in results) == Counter(
            {
                CatalogueOutcome.NEW: 4,
                CatalogueOutcome.REPRO: 3,
                CatalogueOutcome.LATE_VERSION: 1,
                CatalogueOutcome.DUPLICATE: 2,
            }
        )
        assert await _catalog_state(db) == await _catalog_state(one_by_one)
    products, _, events = await _catalog_state(db)
    assert (products[f"HI.{unique}.x"]["version"], products[f"HI.{unique}.late"]["version"]) == (3, 3)
    assert products[f"HI.{unique}.old"]["public"] is True
    assert products[f"HI.{unique}.old"]["release_date"] == past
    fresh_events = [e for e in events if e[0] == f"KECK/{fresh}"]
    assert [e for e in fresh_events if e[1] == "dataset.first"] == [
        (f"KECK/{fresh}", "dataset.first", ((f"HI.{unique}.a", 1),), None)
    ]
    assert fresh_events[0][1] == "dataset.first"  # before any of the program's dataset.new


@pytest.mark.parametrize("together", [False, True], ids=["one_by_one", "in_one_batch"])
async def test_a_complete_file_replacing_a_partial_one_updates_its_version_in_place_and_says_so(
    db: Database, unique: str, together: bool
) -> None:
    propid = f"P{unique}"
    partial = archived(f"HI.{unique}.1", propid=propid, metadata={"exptime_s": 100.0})
    complete = archived(f"HI.{unique}.1", propid=propid, sha256=sha256_of("complete"), metadata={"exptime_s": 600.0})
    complete = complete.model_copy(
        update={
            "size_bytes": 3_000_000,
            "replaces": ReplacedContent(sha256=partial.sha256, size_bytes=partial.size_bytes),
        }
    )
    cataloguer = Cataloguer(PUBLIC_URL)
    if together:
        async with db.transaction() as conn:
            results = await cataloguer.catalogue_batch(conn, [(partial, "c1"), (complete, "c2")])
    else:
        results = []
        for data, correlation_id in ((partial, "c1"), (complete, "c2")):
            async with db.transaction() as conn:
                results.append(await cataloguer.catalogue(conn, data, correlation_id))

    assert [(r.outcome, r.version) for r in results] == [(CatalogueOutcome.NEW, 1), (CatalogueOutcome.REPLACED, 1)]
    (announced,) = results[1].events  # the same version again, with the complete file's checksum and size
    assert (announced.type, announced.correlationid) == ("dataset.new", "c2")
    assert [(f.version, f.sha256, f.size_bytes) for f in announced.data.files] == [(1, complete.sha256, 3_000_000)]
    versions = await db.pool.fetch(
        "SELECT version, sha256, size_bytes FROM product_versions WHERE archive_id = $1", partial.archive_id
    )
    assert [tuple(v) for v in versions] == [(1, complete.sha256, 3_000_000)]
    product = await db.pool.fetchrow(
        "SELECT version, t_exptime FROM products WHERE archive_id = $1", partial.archive_id
    )
    assert product is not None
    assert (product["version"], product["t_exptime"]) == (1, 600.0)

    # The complete file's event again is a duplicate; an older replacement arriving last changes nothing; the
    # partial file's, late, is refused (a dead letter to look at).
    older = complete.model_copy(update={"sha256": sha256_of("older"), "archived_at": partial.archived_at})
    for again, outcome in ((complete, CatalogueOutcome.DUPLICATE), (older, CatalogueOutcome.SUPERSEDED)):
        async with db.transaction() as conn:
            assert (await cataloguer.catalogue(conn, again)).outcome is outcome
    assert await db.pool.fetchval("SELECT sha256 FROM product_versions WHERE archive_id = $1", partial.archive_id) == (
        complete.sha256
    )
    with pytest.raises(InvalidProduct):
        async with db.transaction() as conn:
            await cataloguer.catalogue(conn, partial)


async def test_a_conflicting_checksum_in_a_batch_is_dead_lettered_and_the_rest_catalogued(
    db: Database, bus: Bus, unique: str
) -> None:
    propid = f"P{unique}"
    original = archived(f"HI.{unique}.0", propid=propid)
    await catalogue_directly(db, original)
    settings = CatalogSettings(catalog_public_url=PUBLIC_URL, catalog_batch_size=20, catalog_batch_wait=1.0)
    catalog = CatalogInProcess(db, bus, unique, settings=settings)
    await catalog.start(relay=False)
    try:
        good = [event_of(archived(f"HI.{unique}.{i}", propid=propid)) for i in range(1, 6)]
        conflicting = event_of(archived(original.archive_id, propid=propid, sha256=sha256_of("other bytes")))
        await asyncio.gather(*(catalog.publish(event) for event in [*good[:2], conflicting, *good[2:]]))

        letter = await _dead_letter(bus, conflicting.id)
        await bus.drop_dead_letters({conflicting.id})
        assert letter.reason.startswith(f"rejected by handler: {original.archive_id} version 1 is catalogued with")
        await eventually(lambda: _equals(catalog.handled(), 5), what="the five good files")
        assert await db.pool.fetchval("SELECT count(*) FROM products") == 6
        assert await db.pool.fetchval(
            "SELECT sha256 FROM product_versions WHERE archive_id = $1", original.archive_id
        ) == (original.sha256)
        assert {r["event_type"] for r in await db.pool.fetch("SELECT event_type FROM outbox")} == {
            "dataset.first",
            "dataset.new",
        }
    finally:
        await catalog.close()


async def test_concurrent_batches_never_deadlock_and_announce_a_program_first_once(db: Database, unique: str) -> None:
    rng = random.Random(unique)
    programs = [f"P{unique}{p}" for p in range(4)]
    files = [
        archived(f"HI.{unique}.{i:02d}", propid=programs[i % 4], version=version)
        for i in range(24)
        for version in (1, 2, 3)
    ]
    cataloguer = Cataloguer(PUBLIC_URL)

    async def catalogue_some() -> None:
        chosen = rng.sample(files, 30)  # overlapping archive IDs and programs, in any order
        async with db.transaction() as conn:
            await cataloguer.catalogue_batch(conn, [(data, None) for data in chosen])

    await asyncio.wait_for(asyncio.gather(*(catalogue_some() for _ in range(12))), 60)
    await catalogue_directly(db, *files, cataloguer=cataloguer)  # whatever no batch chose

    rows = await db.pool.fetch("SELECT version, count(*) AS n FROM products GROUP BY version")
    assert {r["version"]: r["n"] for r in rows} == {3: 24}
    assert await db.pool.fetchval("SELECT count(*) FROM product_versions") == 72
    firsts = await db.pool.fetch("SELECT subject FROM outbox WHERE event_type = 'dataset.first'")
    assert sorted(r["subject"] for r in firsts) == sorted(f"KECK/{p}" for p in programs)
    assert await db.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'dataset.new'") == 24


# --- releases ----------------------------------------------------------------------------------------


async def test_release_dates_passing_give_one_public_event_per_program_and_level(
    catalog: CatalogInProcess, unique: str
) -> None:
    a, b = f"A{unique}", f"B{unique}"
    soon, later = date(2030, 1, 1), date(2031, 1, 1)
    files = [
        archived(f"HI.{unique}.a1", propid=a, obset="001", release_date=soon),
        archived(f"HI.{unique}.a2", propid=a, obset="002", release_date=soon),
        archived(f"HI.{unique}.a3", propid=a, level="1", obset="001", release_date=soon),
        archived(f"HI.{unique}.b1", propid=b, release_date=soon),
        archived(f"HI.{unique}.b2", propid=b, release_date=soon),
        archived(f"HI.{unique}.b3", propid=b, release_date=later),
    ]
    await catalogue_directly(catalog.db, *files)
    received = await catalog.listen(a, b)
    catalog.start_relay()
    await eventually(lambda: len(received.unique()) == 2 + 6, what="first and new events")

    async with catalog.db.transaction() as conn:
        released = await release_due(conn, today=soon, public_url=PUBLIC_URL)

    assert len(released) == 5
    await eventually(lambda: len(received.of_type("dataset.public")) == 3, what="three public events")
    public = {(e.data.propid, e.data.level): e for e in received.of_type("dataset.public")}
    assert sorted(public) == [(a, "0"), (a, "1"), (b, "0")]
    assert files_of(public[a, "0"]) == [(f"HI.{unique}.a1", 1), (f"HI.{unique}.a2", 1)]
    assert public[a, "0"].data.obsets == ["001", "002"]
    assert files_of(public[a, "1"]) == [(f"HI.{unique}.a3", 1)]
    assert files_of(public[b, "0"]) == [(f"HI.{unique}.b1", 1), (f"HI.{unique}.b2", 1)]
    assert public[b, "0"].routing_key() == f"dataset.public.keck.0.b{unique}"

    async with catalog.db.transaction() as conn:  # the scheduler's next pass: each product is announced once
        assert await release_due(conn, today=soon + timedelta(days=1), public_url=PUBLIC_URL) == []
    rows = await catalog.db.pool.fetch("SELECT archive_id FROM products WHERE public_since IS NULL")
    assert [r["archive_id"] for r in rows] == [f"HI.{unique}.b3"]


async def test_a_file_archived_after_its_release_date_is_public_at_once(catalog: CatalogInProcess, unique: str) -> None:
    propid = f"P{unique}"
    received = await catalog.listen(propid)
    await catalog.start()

    await catalog.publish(archived(f"HI.{unique}.old", propid=propid, release_date=date(2020, 1, 1)))

    await eventually(lambda: len(received.unique()) == 3, what="first, new and public")
    assert [e.type for e in received.unique()] == ["dataset.first", "dataset.new", "dataset.public"]
    assert await catalog.db.pool.fetchval("SELECT public_since IS NOT NULL FROM products") is True


# --- the outbox: each dataset event once, whatever happens to the catalog ------------------------------


async def test_a_catalog_stopped_between_commit_and_publish_delivers_each_event_once_after_restart(
    catalog: CatalogInProcess, unique: str
) -> None:
    propid = f"P{unique}"
    await catalogue_directly(catalog.db, *(archived(f"HI.{unique}.{i}", propid=propid) for i in range(5)))
    received = await catalog.listen(propid)
    dead_broker = CrashBeforePublish()
    catalog.start_relay(OutboxRelay(catalog.db, dead_broker, poll_interval=0.2))
    await asyncio.wait_for(dead_broker.reached.wait(), 10)
    await catalog.stop_relay()  # it dies holding the committed rows it had read
    assert await catalog.unsent() == 6
    assert received.events == []

    catalog.start_relay()

    await eventually(lambda: _equals(catalog.unsent(), 0), what="every row published and marked")
    await eventually(lambda: len(received.events) == 6, what="the six events")
    assert received.ids == Counter(dict.fromkeys(await catalog.outbox_ids(), 1))
    assert _one_event_per_file_and_type(received)


async def test_a_catalog_stopped_between_publish_and_mark_sends_again_and_deduplication_absorbs_it(
    catalog: CatalogInProcess, unique: str
) -> None:
    propid = f"P{unique}"
    await catalogue_directly(catalog.db, *(archived(f"HI.{unique}.{i}", propid=propid) for i in range(5)))
    received = await catalog.listen(propid)
    catalog.start_relay(CrashAfterPublish(catalog.db, catalog.bus, poll_interval=0.2))
    await eventually(lambda: len(received.events) == 6, what="the first publication")
    await catalog.stop_relay()
    assert await catalog.unsent() == 6  # published, but the relay died before saying so

    catalog.start_relay()

    await eventually(lambda: len(received.events) == 12, what="the publication after restart")
    await eventually(lambda: _equals(catalog.unsent(), 0), what="every row marked")
    assert received.ids == Counter(dict.fromkeys(await catalog.outbox_ids(), 2))  # each delivered twice ...
    assert len(received.unique()) == 6  # ... and once after deduplication on the event id
    assert _one_event_per_file_and_type(received)


# --- the catalog order, and positions ----------------------------------------------------------------


@pytest.mark.parametrize("per_transaction", [1, 12])
async def test_a_reader_paging_in_catalog_order_never_skips_or_repeats_a_row_while_rows_arrive(
    db: Database, unique: str, per_transaction: int
) -> None:
    cataloguer = Cataloguer(PUBLIC_URL)
    files = [archived(f"HI.{unique}.{i:03d}", propid=f"P{unique}{i % 4}") for i in range(160)]
    queue: asyncio.Queue[FileArchived] = asyncio.Queue()
    for data in files:
        queue.put_nowait(data)
    written = asyncio.Event()

    async def writer() -> None:
        while not queue.empty():
            batch = [queue.get_nowait() for _ in range(min(per_transaction, queue.qsize()))]
            async with db.transaction() as conn:
                await cataloguer.catalogue_batch(conn, [(data, None) for data in batch])
                # Late commits: without the catalog-order lock, later numbers would commit before this one.
                await asyncio.sleep(random.random() * 0.004)

    async def write_all() -> None:
        await asyncio.gather(*(writer() for _ in range(8)))
        written.set()

    seen: list[str] = []

    async def read_all() -> None:
        cursor = 0
        while True:
            last_page = written.is_set()  # read before the query: that page then sees every commit
            rows = await db.pool.fetch(
                "SELECT archive_id, seq FROM products WHERE seq > $1 ORDER BY seq LIMIT 7", cursor
            )
            seen.extend(r["archive_id"] for r in rows)
            cursor = rows[-1]["seq"] if rows else cursor
            if last_page and not rows:
                return
            await asyncio.sleep(0.001)

    await asyncio.wait_for(asyncio.gather(read_all(), write_all()), 30)

    assert len(seen) == len(set(seen))  # none twice
    assert sorted(seen) == sorted(f.archive_id for f in files)  # none skipped


async def test_the_cone_condition_finds_exactly_the_products_inside_the_cone(db: Database, unique: str) -> None:
    rng = random.Random(unique)
    centre_ra, centre_dec, radius = 359.8, -30.0, 0.5  # across RA 0
    positions = [
        ((centre_ra + rng.uniform(-1.2, 1.2)) % 360, centre_dec + rng.uniform(-1.2, 1.2)) for _ in range(160)
    ] + [(rng.uniform(0, 360), rng.uniform(-90, 90)) for _ in range(40)]
    files = [archived(f"HI.{unique}.{i}", propid=f"P{unique}", ra=ra, dec=dec) for i, (ra, dec) in enumerate(positions)]
    await catalogue_directly(db, *files)
    search = cone(centre_ra, centre_dec, radius)

    params = Params()
    where = cone_condition(search, params)
    rows = await db.pool.fetch(f"SELECT archive_id FROM products p WHERE {where}", *params.values)

    inside = {
        f.archive_id
        for f, (ra, dec) in zip(files, positions, strict=True)
        if angular_distance(ra, dec, centre_ra, centre_dec) <= radius
    }
    assert 0 < len(inside) < len(files)
    assert {r["archive_id"] for r in rows} == inside


async def test_the_catalog_runs_on_the_embedded_postgresql(tmp_path: Path, unique: str) -> None:
    db = await Database.connect(f"embedded://{tmp_path}/pg", "catalog")
    try:
        assert catalog_service.migrations is not None
        async with db.pool.acquire() as conn:
            streams = {"skyport": LIBRARY_MIGRATIONS, "catalog": catalog_service.migrations}
            await Migrator("catalog", streams).apply(conn)
        files = [archived(f"HI.{unique}.{i}", propid=f"P{unique}", ra=10.0 + i * 0.01, dec=-5.0) for i in range(20)]
        await catalogue_directly(db, *files)
        params = Params()
        where = cone_condition(cone(10.0, -5.0, 0.055), params)
        found = await db.pool.fetch(f"SELECT archive_id FROM products p WHERE {where}", *params.values)
        async with db.transaction() as conn:
            released = await release_due(conn, today=FAR_FUTURE, public_url=PUBLIC_URL)
    finally:
        await db.close()
    assert sorted(r["archive_id"] for r in found) == sorted(f"HI.{unique}.{i}" for i in range(6))
    assert len(released) == 20


# --- helpers -----------------------------------------------------------------------------------------


async def _catalog_state(
    db: Database,
) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What a reader can tell of a catalog, without the times and numbers its transactions gave it."""
    products = {
        row["archive_id"]: {k: v for k, v in dict(row).items() if k not in _TIMES}
        for row in await db.pool.fetch("SELECT *, public_since IS NOT NULL AS public FROM products")
    }
    versions = [
        tuple(v for k, v in dict(row).items() if k != "catalogued_at")
        for row in await db.pool.fetch("SELECT * FROM product_versions ORDER BY archive_id, version")
    ]
    events = []
    for row in await db.pool.fetch("SELECT subject, body FROM outbox ORDER BY id"):
        data = json.loads(row["body"])["data"]
        files = tuple((f["archive_id"], f["version"]) for f in data["files"])
        events.append(
            (row["subject"], f"dataset.{data['type']}", files, (data.get("repro") or {}).get("supersedes_version"))
        )
    return products, versions, events


_TIMES = {"public_since", "catalogued_at", "seq"}


def _one_event_per_file_and_type(received: Received) -> bool:
    """No file was catalogued twice under two event ids (which deduplication could not absorb)."""
    counts = Counter((e.type, f.archive_id) for e in received.unique() for f in e.data.files)
    return set(counts.values()) == {1}


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _dead_letter(bus: Bus, message_id: str) -> Any:
    found: list[Any] = []

    async def arrived() -> bool:
        found[:] = [letter for letter in await bus.dead_letters(limit=10_000) if letter.message_id == message_id]
        return bool(found)

    await eventually(arrived, what=f"dead letter {message_id}")
    return found[0]
