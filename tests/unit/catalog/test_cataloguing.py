"""How the catalog reads a file.archived event, and how it groups the dataset events it emits (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from services.catalog.access import ANONYMOUS, Viewer, visible_condition
from services.catalog.app import file_archived_subscription
from services.catalog.cataloguing import Cataloguer, InvalidProduct, calib_level_of, describe, effective_release_date
from services.catalog.dataset_events import public_events
from services.catalog.settings import CatalogSettings
from services.catalog.sky import healpix_index
from services.catalog.storage.products import AnnouncedFile
from services.catalog.storage.programs import Program
from services.catalog.storage.sql import Params
from skyport.db import Database
from skyport.events import InvalidEvent, decode_event
from tests.support.catalog import FAR_FUTURE, PUBLIC_URL, archived, event_of


def program(months: int | None = None) -> Program:
    return Program("KECK", "2026A_U123", None, months, datetime.now(UTC), None)


def test_an_archived_file_is_described_with_obscore_columns() -> None:
    data = archived("HI.20260315.29523.40", propid="2026A_U123", ra=299.868, dec=22.71)

    product = describe(data)

    assert (product.mission, product.obs_collection, product.facility_name, product.obs_id) == (
        "KECK",
        "KECK",
        "KECK",
        "HI.20260315.29523.40",
    )
    assert (product.s_ra, product.s_dec, product.healpix) == (299.868, 22.71, healpix_index(299.868, 22.71))
    assert product.t_min == pytest.approx(61114.341701, abs=1e-6)
    assert product.t_max == pytest.approx(product.t_min + 600 / 86400)
    assert (product.t_exptime, product.target_name, product.intent) == (600.0, "HD 189733", "science")
    assert (product.calib_level, product.access_format, product.access_estsize) == (1, "application/fits", 1954)
    assert product.filters == ("kv389",)
    assert product.header == {"FRAMENO": 12, "DECKNAME": "C2", "AIRMASS": 1.12}
    assert product.release_date == FAR_FUTURE


def test_a_file_without_a_position_has_no_cell() -> None:
    product = describe(archived("HI.x.1", propid="P", ra=None, dec=None))
    assert (product.s_ra, product.s_dec, product.healpix) == (None, None, None)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"dec_deg": 95.0}, "dec_deg: Input should be less than or equal to 90"),
        ({"ra_deg": None}, "ra_deg and dec_deg come together"),
        ({"exptime_s": -1}, "exptime_s: Input should be greater than or equal to 0"),
        ({"observed_at": "last night"}, "observed_at: Input should be a valid datetime"),
        ({"intent": "engineering"}, "intent: Input should be 'science' or 'calibration'"),
        ({"release_date": "soon"}, "release_date: Input should be a valid date"),
        ({"ra_deg": float("nan")}, "ra_deg: Input should be a finite number"),
    ],
)
def test_metadata_that_make_no_sense_are_refused_with_the_reason(metadata: dict[str, object], reason: str) -> None:
    """The metadata are typed in the event itself: nonsense never reaches the catalog, it is a dead letter."""
    document = json.loads(event_of(archived("HI.x.1", propid="P")).to_json())
    document["data"]["metadata"].update(metadata)
    with pytest.raises(InvalidEvent, match=f"invalid file.archived payload: metadata.*{reason}"):
        decode_event(json.dumps(document).encode())


def test_a_program_that_cannot_be_a_routing_key_word_is_refused() -> None:
    with pytest.raises(InvalidProduct, match=r"program '2026A\.U123'"):
        describe(archived("HI.x.1", propid="2026A.U123"))


def test_the_release_date_is_the_file_s_unless_the_program_has_its_own_period() -> None:
    product = describe(archived("HI.x.1", propid="P", release_date=date(2027, 9, 15)))
    assert effective_release_date(product, program()) == date(2027, 9, 15)
    assert effective_release_date(product, program(months=6)) == date(2026, 9, 15)  # observed 2026-03-15
    undated = describe(archived("HI.x.1", propid="P", release_date=None))
    assert effective_release_date(undated, program(months=0)) == date(2026, 3, 15)
    with pytest.raises(InvalidProduct, match="no release_date"):
        effective_release_date(undated, program())


def test_calib_levels_follow_the_mission_s_levels_unless_configured() -> None:
    levels = {(m, lvl): calib_level_of(m, lvl, {}) for m, lvl in [("KECK", "0"), ("KECK", "2"), ("JWST", "1b")]}
    assert levels == {("KECK", "0"): 1, ("KECK", "2"): 2, ("JWST", "1b"): 1}
    assert calib_level_of("JWST", "3", {}) == 3
    assert calib_level_of("KECK", "1", {"KECK/1": 2}) == 2
    assert calib_level_of("HST", "raw", {}) is None


def announced(archive_id: str, propid: str, level: str, obset: str | None = None) -> AnnouncedFile:
    return AnnouncedFile(archive_id, 1, "JWST", propid, level, obset, f"{archive_id}.fits", "a" * 64, 1000)


def test_public_events_are_one_per_program_and_level() -> None:
    files = [
        announced("jw1_b", "1011", "2b", "002"),
        announced("jw1_a", "1011", "2b", "001"),
        announced("jw1_c", "1011", "2b", "001"),
        announced("jw1_r", "1011", "1b", "001"),
        announced("jw2_a", "2739", "2b"),
    ]

    events = public_events(files, PUBLIC_URL, max_files=1000)

    summary = [(e.data.propid, e.data.level, e.data.obsets, [f.archive_id for f in e.data.files]) for e in events]
    assert summary == [
        ("1011", "1b", ["001"], ["jw1_r"]),
        ("1011", "2b", ["001", "002"], ["jw1_a", "jw1_b", "jw1_c"]),
        ("2739", "2b", [], ["jw2_a"]),
    ]
    assert [e.subject for e in events] == ["JWST/1011", "JWST/1011", "JWST/2739"]
    assert events[0].routing_key() == "dataset.public.jwst.1b.1011"
    assert str(events[1].data.files[0].url) == f"{PUBLIC_URL}/v1/files/jw1_a?version=1"


def test_a_large_release_is_announced_in_events_of_bounded_size() -> None:
    files = [announced(f"jw_{i:04d}", "1011", "2b") for i in range(2500)]
    events = public_events(files, PUBLIC_URL, max_files=1000)
    assert [len(e.data.files) for e in events] == [1000, 1000, 500]
    assert len({f.archive_id for e in events for f in e.data.files}) == 2500


def test_the_access_rule_asks_the_database_only_what_it_needs() -> None:
    params = Params("KECK")
    assert visible_condition(ANONYMOUS, params) == "(p.public_since IS NOT NULL)"
    assert visible_condition(Viewer(7, "root", is_admin=True), params) == "true"
    condition = visible_condition(Viewer(42, "alice"), params, alias="x")
    assert "x.public_since IS NOT NULL OR EXISTS" in condition
    assert "m.user_id = $2" in condition
    assert params.values == ["KECK", 42]
    with pytest.raises(ValueError, match="alias"):
        visible_condition(ANONYMOUS, params, alias="p; DROP TABLE products")


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_CATALOG_PUBLIC_URL", "https://archive.example.org/")
    monkeypatch.setenv("SKYPORT_CALIB_LEVELS", '{"keck/1": 2}')
    settings = CatalogSettings()
    assert settings.catalog_public_url == "https://archive.example.org"
    assert settings.calib_levels == {"KECK/1": 2}
    monkeypatch.setenv("SKYPORT_CALIB_LEVELS", '{"KECK": 2}')
    with pytest.raises(ValueError, match="MISSION"):
        CatalogSettings()


def test_the_consumer_takes_batches_of_the_configured_size_with_a_prefetch_for_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SKYPORT_CATALOG_BATCH_SIZE", "150")
    monkeypatch.setenv("SKYPORT_CATALOG_BATCH_WAIT", "0.2")
    monkeypatch.setenv("SKYPORT_CATALOG_CONCURRENCY", "3")
    db = Database(cast(Any, None), "postgresql://unused", "catalog")  # only captured, never used here
    subscription = file_archived_subscription(db, Cataloguer(PUBLIC_URL), CatalogSettings())
    assert subscription.batching is not None
    assert (subscription.batching.size, subscription.batching.wait) == (150, 0.2)
    assert (subscription.prefetch, subscription.concurrent_batches) == (450, 3)

    # A batch size of 1: one event per transaction, as before batching, with as many events at once.
    monkeypatch.setenv("SKYPORT_CATALOG_BATCH_SIZE", "1")
    monkeypatch.setenv("SKYPORT_CATALOG_CONCURRENCY", "16")
    subscription = file_archived_subscription(db, Cataloguer(PUBLIC_URL), CatalogSettings())
    assert (subscription.batching, subscription.prefetch) == (None, 16)
