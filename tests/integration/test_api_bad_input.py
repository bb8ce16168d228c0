"""Bad input at the catalog API is the caller's 4xx naming what is wrong, never a server error (the fuzzer's finds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.catalog import cli
from services.catalog.cataloguing import Cataloguer
from skyport.db import Database
from tests.support.catalog import archived, catalog_database
from tests.support.catalog_api import ApiClient, archive_file, serve_catalog_api

CONTENT = b"SIMPLE  =                    T" * 1000


@pytest.fixture
async def api(database_url: str, unique: str, tmp_path: Path) -> AsyncIterator[tuple[ApiClient, Database, str]]:
    async with catalog_database(database_url, f"catalog_{unique}") as db, serve_catalog_api(db, tmp_path) as api:
        await cli.add_user(db, f"pi-{unique}")
        api.tokens["pi"] = await cli.issue_token(db, f"pi-{unique}")
        await cli.add_program(db, "KECK", f"P{unique}", pi=f"pi-{unique}")
        public = archived(f"HI.{unique}.public", propid=f"P{unique}", release_date=date(2020, 1, 1))
        secret = archived(f"HI.{unique}.secret", propid=f"P{unique}")
        for data in (public, secret):
            await archive_file(db, tmp_path, data, CONTENT, Cataloguer(api.public_url))
        yield api, db, unique


async def answer(api: ApiClient, method: str, path: str, **options: Any) -> tuple[int, Any]:
    response = await api.request(method, path, **options)
    body = await response.read()
    return response.status, (await response.json()) if response.content_type == "application/json" else body


async def test_a_nul_character_anywhere_is_refused_naming_where_it_was(
    api: tuple[ApiClient, Database, str],
) -> None:
    client, _, unique = api
    members = f"/v1/programs/KECK/P{unique}/members"
    cases = [
        ("GET", "/v1/products", {"params": {"target": "HD\x00189733"}}, "target"),
        ("GET", "/v1/products", {"params": {"mission": "KECK\x00"}}, "mission"),
        ("GET", "/v1/products/download-script", {"params": {"filename": "a\x00*"}}, "filename"),
        ("GET", "/v1/products", {"params": {"cursor": "\x00"}}, "cursor"),
        ("GET", "/v1/products/HI.\x00", {}, "archive_id"),
        ("GET", "/v1/files/HI.%00.x", {}, "archive_id"),
        ("DELETE", f"{members}/bob%00", {"who": "pi"}, "username"),
        ("PUT", f"{members}/bob%00", {"who": "pi", "json": {"role": "coi"}}, "username"),
        ("POST", f"/v1/programs/KECK/P{unique}/release", {"who": "pi", "json": {"archive_ids": ["a\x00"]}}, None),
        ("POST", "/v1/tokens", {"who": "pi", "json": {"label": "lap\x00top"}}, "label"),
        ("POST", "/v1/tokens", {"who": "pi", "json": {"la\x00bel": "x"}}, "la\x00bel"),
    ]
    wrong = {}
    for method, path, options, parameter in cases:
        status, body = await answer(client, method, path, **options)
        expected = parameter or "archive_ids.0"
        if status != 400 or body.get("parameter") != expected or "NUL character" not in body.get("error", ""):
            wrong[f"{method} {path} {options}"] = (status, body)
    assert wrong == {}


async def test_a_cone_of_a_subnormal_radius_is_searched_not_a_server_error(
    api: tuple[ApiClient, Database, str],
) -> None:
    client, _, unique = api
    for radius in ("1.1e-308", "5e-324"):
        status, body = await answer(
            client, "GET", "/v1/products", params={"ra": "150.25", "dec": "2.5", "radius": radius}
        )
        assert status == 200, body
        # The public product lies exactly at the centre: no farther than any radius.
        assert [p["archive_id"] for p in body["products"]] == [f"HI.{unique}.public"]


async def test_an_unusable_range_is_ignored_and_the_whole_file_sent(api: tuple[ApiClient, Database, str]) -> None:
    client, _, unique = api
    for header in ("", "bytes=", "lines=1-2", "bytes=abc-"):
        response = await client.get(f"/v1/files/HI.{unique}.public", headers={"Range": header})
        assert response.status == 200, (header, response.status)
        assert await response.read() == CONTENT
    partial = await client.get(f"/v1/files/HI.{unique}.public", headers={"Range": "bytes=10-19"})
    assert partial.status == 206
    assert await partial.read() == CONTENT[10:20]
    past_the_end = await client.get(f"/v1/files/HI.{unique}.public", headers={"Range": f"bytes={len(CONTENT)}-"})
    assert past_the_end.status == 416


async def test_a_version_beyond_the_documented_maximum_is_refused_naming_it(
    api: tuple[ApiClient, Database, str],
) -> None:
    client, _, unique = api
    for version in ("2147483648", "99999999999"):
        status, body = await answer(client, "GET", f"/v1/files/HI.{unique}.public", params={"version": version})
        assert (status, body["parameter"]) == (400, "version")
        assert "2147483647" in body["error"]


async def test_a_null_list_releases_nothing(api: tuple[ApiClient, Database, str]) -> None:
    client, _, unique = api
    release = f"/v1/programs/KECK/P{unique}/release"
    status, body = await answer(client, "POST", release, who="pi", json={"archive_ids": None})
    assert (status, body["parameter"]) == (400, "archive_ids")
    assert "leave it out" in body["error"]
    searched = await client.search_ids(params={"propid": f"P{unique}"})
    assert searched == [f"HI.{unique}.public"]  # the secret product is still proprietary
