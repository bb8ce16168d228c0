"""The catalog's observing nights on the real PostgreSQL: a product's night is its site's, in search, script and page;
and the links in an answer start with the address the caller used through a proxy (the gateway)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.catalog.cataloguing import Cataloguer
from skyport.db import Database
from skyport.events import FileArchived
from skyport.instruments import load_instruments
from tests.support.catalog import archived, catalog_database
from tests.support.catalog_api import ApiClient, archive_file, serve_catalog_api
from tests.support.flow import INSTRUMENTS

HAWAII = ZoneInfo("Pacific/Honolulu")
PAST = date(2020, 1, 1)  # public data: the anonymous caller sees them
NIGHTS = load_instruments(INSTRUMENTS).nights()


@pytest.fixture
async def db(database_url: str, unique: str) -> AsyncIterator[Database]:
    async with catalog_database(database_url, f"catalog_{unique}") as db:
        yield db


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[ApiClient]:
    async with serve_catalog_api(db, tmp_path / "archive", nights=NIGHTS) as api:
        yield api


def observed(archive_id: str, propid: str, when: datetime, mission: str = "KECK") -> FileArchived:
    instrument = "HIRES" if mission == "KECK" else "NIRCAM"
    stamp = when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return archived(
        archive_id,
        propid=propid,
        mission=mission,
        instrument=instrument,
        release_date=PAST,
        metadata={"observed_at": stamp},
    )


async def catalogue(api: ApiClient, db: Database, tmp_path: Path, files: list[FileArchived]) -> None:
    cataloguer = Cataloguer(api.public_url, nights=NIGHTS)
    for data in files:
        await archive_file(db, tmp_path / "archive", data, data.archive_id.encode() * 100, cataloguer)


async def test_a_search_by_night_finds_the_site_s_observing_night(
    api: ApiClient, db: Database, tmp_path: Path, unique: str
) -> None:
    keck, jwst = f"K{unique}", f"J{unique}"
    local = {
        "morning": datetime(2026, 11, 21, 11, 0, tzinfo=HAWAII),  # the night of the 20th ends at noon
        "afternoon": datetime(2026, 11, 21, 15, 0, tzinfo=HAWAII),  # 01:00 UT on the 22nd
        "late": datetime(2026, 11, 21, 23, 30, tzinfo=HAWAII),
        "small_hours": datetime(2026, 11, 22, 1, 30, tzinfo=HAWAII),
        "next": datetime(2026, 11, 22, 13, 0, tzinfo=HAWAII),
    }
    files = [observed(f"HI.{unique}.{name}", keck, when) for name, when in local.items()]
    # JWST has no site night: its night is the UT date.
    files.append(observed(f"jw{unique}_late_uncal", jwst, datetime(2026, 11, 21, 23, 30, tzinfo=UTC), "JWST"))
    files.append(observed(f"jw{unique}_next_uncal", jwst, datetime(2026, 11, 22, 0, 30, tzinfo=UTC), "JWST"))
    await catalogue(api, db, tmp_path, files)

    programs = [("propid", keck), ("propid", jwst)]
    found = await api.json("/v1/products", params=[("night", "2026-11-21"), *programs])
    assert {(p["archive_id"], p["night"]) for p in found["products"]} == {
        (f"HI.{unique}.afternoon", "2026-11-21"),
        (f"HI.{unique}.late", "2026-11-21"),
        (f"HI.{unique}.small_hours", "2026-11-21"),
        (f"jw{unique}_late_uncal", "2026-11-21"),
    }
    page = await api.json(f"/v1/products/HI.{unique}.morning")
    assert page["night"] == "2026-11-20"

    # The download script of a night lists the same files.
    response = await api.get("/v1/products/download-script", params=[("night", "2026-11-21"), ("propid", keck)])
    script = await response.text()
    assert response.status == 200, script
    assert {name for name in local if f"HI.{unique}.{name}?" in script} == {"afternoon", "late", "small_hours"}

    refused = await api.json("/v1/products", params={"night": "21/11/2026"}, status=400)
    assert refused["parameter"] == "night"


async def test_tonight_is_each_product_s_own_site_s_night_in_progress(
    api: ApiClient, db: Database, tmp_path: Path, unique: str
) -> None:
    keck, jwst = f"K{unique}", f"J{unique}"
    now = datetime.now(UTC)
    keck_tonight = NIGHTS.rule("KECK").tonight(now)
    begins, _ = NIGHTS.rule("KECK").span(keck_tonight)
    files = [
        observed(f"HI.{unique}.tonight", keck, begins),
        observed(f"HI.{unique}.last", keck, begins - timedelta(minutes=1)),  # the end of last night
        observed(f"jw{unique}_now_uncal", jwst, now, "JWST"),
    ]
    await catalogue(api, db, tmp_path, files)

    body = await api.json("/v1/nights")
    assert [(r["mission"], r["time_zone"], r["boundary"]) for r in body["missions"]] == [
        ("JWST", "UTC", "00:00"),
        ("KECK", "Pacific/Honolulu", "12:00"),
    ]
    tonight = {r["mission"]: r["tonight"] for r in body["missions"]}
    assert tonight["KECK"] in {keck_tonight.isoformat(), NIGHTS.rule("KECK").tonight().isoformat()}
    found = await api.search_ids(params=[("night", "tonight"), ("propid", keck), ("propid", jwst)])
    if NIGHTS.rule("KECK").tonight() == keck_tonight:  # not across Hawaii's noon since the start of the test
        assert sorted(found) == sorted([f"HI.{unique}.tonight", f"jw{unique}_now_uncal"])


async def test_links_start_with_the_address_a_proxy_says_the_caller_used(
    api: ApiClient, db: Database, tmp_path: Path, unique: str
) -> None:
    data = observed(f"HI.{unique}.1", f"K{unique}", datetime(2026, 11, 21, 23, 30, tzinfo=HAWAII))
    await catalogue(api, db, tmp_path, [data])
    path = f"/v1/products/{data.archive_id}"

    async def access_url(headers: dict[str, str]) -> str:
        response = await api.get(path, headers=headers)
        assert response.status == 200
        return str((await response.json())["access_url"])

    forwarded = {"Forwarded": 'host="skyport.example.org:8443";proto=https'}
    assert await access_url(forwarded) == f"https://skyport.example.org:8443/v1/files/{data.archive_id}?version=1"
    assert await access_url({}) == f"{api.public_url}/v1/files/{data.archive_id}?version=1"
    # A host that would not stay a host, or a scheme that is not the web's, is not used.
    for value in ('host="evil.example/x?";proto=https', 'host="a.example";proto=javascript', "for=10.0.0.1"):
        assert await access_url({"Forwarded": value}) == f"{api.public_url}/v1/files/{data.archive_id}?version=1"

    response = await api.get("/v1/products/download-script", params={"propid": f"K{unique}"}, headers=forwarded)
    script = await response.text()
    assert f"https://skyport.example.org:8443/v1/files/{data.archive_id}?version=1" in script
    assert api.public_url not in script
