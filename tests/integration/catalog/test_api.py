"""The catalog API on the real PostgreSQL: every door keeps the access rule, searches filter and page in catalog
order, downloads resume and carry their digest, and bad input is refused with a clear error and changes nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from services.catalog import cli
from services.catalog.bulk import local_name
from services.catalog.cataloguing import Cataloguer, to_mjd
from skyport.api import catalog as api_models
from skyport.api.errors import ErrorCode
from skyport.db import Database
from skyport.events import FileArchived, decode_event
from tests.support.catalog import FAR_FUTURE, OBSERVED_AT, archived, catalog_database
from tests.support.catalog_api import ApiClient, archive_file, serve_catalog_api

PAST = date(2020, 1, 1)


@pytest.fixture
async def db(database_url: str, unique: str) -> AsyncIterator[Database]:
    async with catalog_database(database_url, f"catalog_{unique}") as db:
        yield db


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
async def api(db: Database, storage: Path) -> AsyncIterator[ApiClient]:
    async with serve_catalog_api(db, storage) as api:
        yield api


# --- one program's people and products, and what each of them must see ----------------------------------


@dataclass
class Observatory:
    """Program P (a PI, a co-investigator, a collaborator, a former collaborator) and program Q, with a
    proprietary product of each and a public one of P; the three share every searchable property."""

    api: ApiClient
    db: Database
    storage: Path
    unique: str
    propid: str
    other: str
    secret: FileArchived
    public: FileArchived
    others: FileArchived
    content: dict[str, bytes]

    def user(self, who: str) -> str:
        return f"{who}-{self.unique}"


PEOPLE = ("pi", "coi", "collaborator", "former", "stranger", "other-pi", "admin", "newcomer")
MEMBERS = {
    # who: (member of P, member of Q); an administrator counts as a member of every program
    "anonymous": (False, False),
    "stranger": (False, False),
    "former": (False, False),  # a collaborator of P, removed by an administration command
    "other-pi": (False, True),
    "collaborator": (True, False),
    "coi": (True, False),
    "pi": (True, False),
    "admin": (True, True),
}


@pytest.fixture
async def observatory(api: ApiClient, db: Database, storage: Path, unique: str) -> Observatory:
    propid, other = f"P{unique}", f"Q{unique}"
    for who in PEOPLE:
        await cli.add_user(db, f"{who}-{unique}", admin=who == "admin")
        api.tokens[who] = await cli.issue_token(db, f"{who}-{unique}")
    await cli.add_program(db, "KECK", propid, title="Hot Jupiters", pi=f"pi-{unique}")
    await cli.add_program(db, "KECK", other, pi=f"other-pi-{unique}")
    await cli.grant_role(db, "KECK", propid, f"coi-{unique}", "coi")
    await cli.grant_role(db, "KECK", propid, f"collaborator-{unique}")
    await cli.grant_role(db, "KECK", propid, f"former-{unique}")
    await cli.revoke_role(db, "KECK", propid, f"former-{unique}")
    cataloguer = Cataloguer(api.public_url)
    files = {
        "secret": archived(f"HI.{unique}.secret", propid=propid, release_date=FAR_FUTURE),
        "public": archived(f"HI.{unique}.public", propid=propid, release_date=PAST),
        "others": archived(f"HI.{unique}.others", propid=other, release_date=FAR_FUTURE),
    }
    content = {}
    for name, data in files.items():
        content[data.archive_id] = os.urandom(4096) + name.encode()
        files[name] = await archive_file(db, storage, data, content[data.archive_id], cataloguer)
    return Observatory(
        api, db, storage, unique, propid, other, files["secret"], files["public"], files["others"], content
    )


def searches(o: Observatory) -> dict[str, list[tuple[str, str]]]:
    """A search by each filter (and all of them at once), each matching all three products."""
    mjd = to_mjd(OBSERVED_AT)
    by_filter = {
        "mission": [("mission", "keck")],
        "program": [("propid", o.propid), ("propid", o.other)],
        "instrument": [("instrument", "hires")],
        "level": [("level", "0")],
        "intent": [("intent", "science")],
        "time as MJD": [("t_min", str(mjd - 0.001)), ("t_max", str(mjd + 0.001))],
        "time as ISO": [("t_min", "2026-03-15"), ("t_max", "2026-03-15T23:59:59Z")],
        "archive time": [("archived_since", "2026-01-01")],
        "file name": [("filename", f"HI.{o.unique}.*.FIT?")],
        "target": [("target", "d 18973")],
        "cone": [("ra", "150.25"), ("dec", "2.5"), ("radius", "0.001")],
    }
    every = [p for name, params in by_filter.items() if name != "time as ISO" for p in params]
    return {"nothing": [], **by_filter, "every filter": every}


def normalised(body: dict[str, Any], archive_id: str) -> dict[str, Any]:
    return {k: v.replace(archive_id, "<id>") if isinstance(v, str) else v for k, v in body.items()}


async def observe(o: Observatory, who: str) -> dict[str, Any]:
    """What ``who`` learns of the catalog through every door of the API."""
    api = o.api
    known = (o.secret.archive_id, o.public.archive_id, o.others.archive_id)
    seen: dict[str, Any] = {}
    for name, params in searches(o).items():
        body = await api.json("/v1/products", who=who, params=[*params, ("count", "true")])
        seen[f"search by {name}"] = frozenset(p["archive_id"] for p in body["products"])
        seen[f"count by {name}"] = body["total"]
        script = await (await api.get("/v1/products/download-script", who=who, params=params)).text()
        seen[f"script by {name}"] = frozenset(a for a in known if a in script)
    unknown = "HI.no.such.product"
    for door, path in (("page", "/v1/products/{}"), ("file", "/v1/files/{}"), ("file v1", "/v1/files/{}?version=1")):
        answer_to_unknown = await api.json(path.format(unknown), who=who, status=404)
        for product in (o.secret, o.others):
            response = await api.get(path.format(product.archive_id), who=who)
            if response.status == 200 and door == "page":
                body = await response.json()
                shown = body["archive_id"] == product.archive_id and [v["version"] for v in body["versions"]] == [1]
                seen[f"{door} of {product.propid}"] = "shown" if shown else body
            elif response.status == 200:
                shown = await response.read() == o.content[product.archive_id]
                seen[f"{door} of {product.propid}"] = "shown" if shown else "wrong bytes"
            elif response.status == 404:
                same = normalised(await response.json(), product.archive_id) == normalised(answer_to_unknown, unknown)
                seen[f"{door} of {product.propid}"] = "as unknown" if same else await response.json()
            else:
                seen[f"{door} of {product.propid}"] = response.status
    me = await api.get("/v1/me", who=who)
    seen["my programs"] = (
        me.status if me.status != 200 else frozenset(p["propid"] for p in (await me.json())["programs"])
    )
    seen["members of P"] = (await api.get(f"/v1/programs/KECK/{o.propid}/members", who=who)).status
    return seen


def expected(o: Observatory, who: str, *, released: bool = False) -> dict[str, Any]:
    """What the access rule lets ``who`` learn: P's proprietary product if a member of P (or after its release),
    Q's if a member of Q, and the public product always."""
    member_of_p, member_of_q = MEMBERS[who]
    visible = {o.public.archive_id}
    visible |= {o.secret.archive_id} if member_of_p or released else set()
    visible |= {o.others.archive_id} if member_of_q else set()
    wanted: dict[str, Any] = {}
    for name in searches(o):
        wanted[f"search by {name}"] = frozenset(visible)
        wanted[f"count by {name}"] = len(visible)
        wanted[f"script by {name}"] = frozenset(visible)
    for door in ("page", "file", "file v1"):
        wanted[f"{door} of {o.propid}"] = "shown" if member_of_p or released else "as unknown"
        wanted[f"{door} of {o.other}"] = "shown" if member_of_q else "as unknown"
    if who == "anonymous":
        wanted["my programs"] = 401
        wanted["members of P"] = 401
    else:
        wanted["my programs"] = frozenset({o.propid} if member_of_p else set()) | ({o.other} if member_of_q else set())
        wanted["members of P"] = 200 if member_of_p else 404
    return wanted


def differences(seen: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {door: (seen.get(door), wanted[door]) for door in wanted if seen.get(door) != wanted[door]}


async def test_every_door_shows_a_proprietary_product_to_members_only_and_to_everyone_after_its_release(
    observatory: Observatory,
) -> None:
    o = observatory
    before = {who: differences(await observe(o, who), expected(o, who)) for who in MEMBERS}
    assert before == {who: {} for who in MEMBERS}

    response = await o.api.request("POST", f"/v1/programs/keck/{o.propid}/release", who="pi")
    assert response.status == 200
    assert (await response.json())["released"] == [o.secret.archive_id]

    after = {who: differences(await observe(o, who), expected(o, who, released=True)) for who in MEMBERS}
    assert after == {who: {} for who in MEMBERS}


async def test_a_revoked_collaborator_loses_access_at_the_next_request(observatory: Observatory) -> None:
    o = observatory
    assert differences(await observe(o, "collaborator"), expected(o, "collaborator")) == {}

    response = await o.api.request("DELETE", f"/v1/programs/KECK/{o.propid}/members/{o.user('collaborator')}", who="pi")

    assert response.status == 204
    assert (await o.api.get(f"/v1/files/{o.secret.archive_id}", who="collaborator")).status == 404
    assert differences(await observe(o, "collaborator"), expected(o, "stranger")) == {}
    changes = [
        decode_event(bytes(r["body"])).data
        for r in await o.db.pool.fetch("SELECT body FROM outbox WHERE event_type = 'access.changed' ORDER BY id")
    ]
    assert (changes[-1].username, changes[-1].change, changes[-1].changed_by) == (
        o.user("collaborator"),
        "revoked",
        o.user("pi"),
    )


async def test_the_pi_grants_and_changes_memberships_at_once_and_only_the_pi_may(observatory: Observatory) -> None:
    o = observatory
    members = f"/v1/programs/KECK/{o.propid}/members"
    newcomer = f"{members}/{o.user('newcomer')}"
    assert (await o.api.get(f"/v1/products/{o.secret.archive_id}", who="newcomer")).status == 404

    refused = {
        who: (await o.api.request("PUT", newcomer, who=who, json={"role": "collaborator"})).status
        for who in ("anonymous", "stranger", "collaborator", "coi", "former", "other-pi")
    }
    granted = await o.api.request("PUT", newcomer, who="pi", json={"role": "collaborator"})
    again = await o.api.request("PUT", newcomer, who="pi", json={"role": "collaborator"})

    assert refused == {
        "anonymous": 401,
        "stranger": 403,
        "collaborator": 403,
        "coi": 403,
        "former": 403,
        "other-pi": 403,
    }
    assert (granted.status, (await granted.json())["changed"]) == (200, True)
    assert (again.status, (await again.json())["changed"]) == (200, False)
    assert (await o.api.get(f"/v1/products/{o.secret.archive_id}", who="newcomer")).status == 200
    listed = await o.api.json(members, who="newcomer")
    assert {(m["username"], m["role"]) for m in listed["members"]} == {
        (o.user("pi"), "pi"),
        (o.user("coi"), "coi"),
        (o.user("collaborator"), "collaborator"),
        (o.user("newcomer"), "collaborator"),
    }
    assert (await o.api.request("PUT", newcomer, who="pi", json={"role": "coi"})).status == 200
    assert (await o.api.request("PUT", newcomer, who="pi", json={"role": "pi"})).status == 403  # administrators only
    assert (await o.api.request("DELETE", f"{members}/{o.user('pi')}", who="pi")).status == 403
    assert (await o.api.request("DELETE", newcomer, who="pi")).status == 204
    assert (await o.api.request("DELETE", newcomer, who="pi")).status == 404
    assert (await o.api.get(f"/v1/products/{o.secret.archive_id}", who="newcomer")).status == 404
    # The administrator may change any program's members, and release its data.
    assert (await o.api.request("PUT", newcomer, who="admin", json={"role": "collaborator"})).status == 200
    released = await o.api.request("POST", f"/v1/programs/KECK/{o.other}/release", who="admin")
    assert (await released.json())["released"] == [o.others.archive_id]


async def test_the_members_answer_says_what_the_caller_may_do_as_the_access_rule_decides(
    observatory: Observatory,
) -> None:
    # The page offers exactly these (it weighs no role itself), so they must be the rule's own answers.
    o = observatory
    members = f"/v1/programs/KECK/{o.propid}/members"
    nobody = {o.user("pi"): False, o.user("coi"): False, o.user("collaborator"): False}

    async def rights(who: str) -> tuple[bool, list[str], bool, dict[str, bool]]:
        answer = await o.api.json(members, who=who)
        removable = {m["username"]: m["may_remove"] for m in answer["members"]}
        return answer["may_manage_members"], answer["grantable_roles"], answer["may_release_early"], removable

    assert {who: await rights(who) for who in ("pi", "coi", "collaborator", "admin")} == {
        # The PI changes every membership but a PI's, and releases early.
        "pi": (True, ["coi", "collaborator"], True, {**nobody, o.user("coi"): True, o.user("collaborator"): True}),
        # The rule gives a co-investigator no power over members (DESIGN's "co-investigators the PI allows" is
        # not built yet), and a collaborator none either: both see the members, read-only.
        "coi": (False, [], False, nobody),
        "collaborator": (False, [], False, nobody),
        # An administrator changes anything, the PI too, in a program they are not a member of.
        "admin": (True, ["pi", "coi", "collaborator"], True, dict.fromkeys(nobody, True)),
    }
    assert (await o.api.get(members, who="stranger")).status == 404  # no answer, so no rights, to a stranger

    # What the PI is offered the catalog then allows, and what it is not offered the catalog refuses.
    newcomer = f"{members}/{o.user('newcomer')}"
    assert (await o.api.request("PUT", newcomer, who="pi", json={"role": "coi"})).status == 200
    _, _, _, removable = await rights("pi")
    assert removable[o.user("newcomer")] is True
    assert (await o.api.request("PUT", newcomer, who="pi", json={"role": "pi"})).status == 403
    assert (await o.api.request("DELETE", f"{members}/{o.user('pi')}", who="pi")).status == 403
    # The rights follow the role at once: the newcomer, now a co-investigator, may change nothing.
    assert await rights("newcomer") == (False, [], False, {**nobody, o.user("newcomer"): False})
    assert (await o.api.request("DELETE", newcomer, who="pi")).status == 204


async def test_tokens_are_issued_shown_once_and_stop_working_when_revoked(observatory: Observatory) -> None:
    o = observatory
    response = await o.api.request("POST", "/v1/tokens", who="pi", json={"label": "laptop"})
    issued = await response.json()
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    o.api.tokens["laptop"] = issued["token"]

    me = await o.api.json("/v1/me", who="laptop")
    assert me["username"] == o.user("pi")
    assert {(t["token_id"], t["label"]) for t in me["tokens"]} >= {(issued["token_id"], "laptop")}
    assert all("token" not in t for t in me["tokens"])
    assert (await o.api.request("DELETE", f"/v1/tokens/{issued['token_id']}", who="stranger")).status == 404

    assert (await o.api.request("DELETE", f"/v1/tokens/{issued['token_id']}", who="laptop")).status == 204

    refused = await o.api.get("/v1/products", who="laptop")
    assert refused.status == 401
    assert "revoked" in (await refused.json())["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await o.api.request("DELETE", f"/v1/tokens/{issued['token_id']}", who="pi")).status == 404
    assert (await o.api.get("/v1/me", who="pi")).status == 200  # the PI's other token still works


async def test_a_service_asks_what_another_user_may_see_now_and_only_an_administrator_may_ask(
    observatory: Observatory,
) -> None:
    o = observatory
    asked = [o.secret.archive_id, o.public.archive_id, o.others.archive_id, f"HI.{o.unique}.nothing"]
    programs = [{"mission": "keck", "propid": o.propid}, {"mission": "KECK", "propid": o.other}]

    async def visible(username: str, who: str = "admin") -> tuple[int, Any]:
        response = await o.api.request(
            "POST",
            "/v1/access/visible",
            who=who,
            json={"username": username, "archive_ids": asked, "programs": programs},
        )
        return response.status, await response.json()

    def seen(answer: Any) -> tuple[set[str], set[str]]:
        model = api_models.Visible.model_validate(answer)
        return set(model.archive_ids), {p.propid for p in model.programs}

    secret, public, others = o.secret.archive_id, o.public.archive_id, o.others.archive_id
    expected_before = {
        "collaborator": ({secret, public}, {o.propid}),
        "stranger": ({public}, set()),
        "former": ({public}, set()),
        "other-pi": ({public, others}, {o.other}),
        "admin": ({secret, public, others}, {o.propid, o.other}),
    }
    for who, expected_seen in expected_before.items():
        status, answer = await visible(o.user(who).upper())  # usernames are compared in lower case
        assert status == 200, answer
        assert (answer["username"], answer["known"]) == (o.user(who), True)
        assert seen(answer) == expected_seen, who
    # Someone the catalog does not know sees nothing, not even public data.
    status, answer = await visible(f"nobody-{o.unique}")
    assert (status, answer["known"], answer["archive_ids"], answer["programs"]) == (200, False, [], [])
    # Only an administrator asks: to anyone else the answer would tell which proprietary products exist.
    for who in ("pi", "collaborator", "stranger"):
        status, answer = await visible(o.user("stranger"), who=who)
        assert status == 403, answer
    assert (await visible(o.user("stranger"), who="anonymous"))[0] == 401
    refused = await o.api.request("POST", "/v1/access/visible", who="admin", json={"username": "x", "archive": []})
    assert refused.status == 400

    # A revoked collaborator sees nothing more from that moment; a release shows the product to everyone.
    revoked = await o.api.request("DELETE", f"/v1/programs/KECK/{o.propid}/members/{o.user('collaborator')}", who="pi")
    assert revoked.status == 204
    assert seen((await visible(o.user("collaborator")))[1]) == ({public}, set())
    released = await o.api.request("POST", f"/v1/programs/keck/{o.propid}/release", who="pi")
    assert released.status == 200
    assert seen((await visible(o.user("stranger")))[1]) == ({secret, public}, set())


# --- searches ---------------------------------------------------------------------------------------------


async def test_answers_carry_exactly_the_fields_of_the_published_models(observatory: Observatory) -> None:
    o = observatory
    page = await o.api.json("/v1/products", who="admin", params={"propid": o.propid})
    assert set(page) == {"products", "next_cursor", "more"}  # total only when counted, never null
    assert page["products"]
    for product in page["products"]:
        assert set(product) == set(api_models.Product.model_fields)
    assert set(await o.api.json("/v1/products", params={"count": "true"})) == set(api_models.ProductPage.model_fields)
    detail = await o.api.json(f"/v1/products/{o.public.archive_id}", who="pi")
    assert set(detail) == set(api_models.ProductDetail.model_fields)
    [version] = detail["versions"]
    assert set(version) == set(api_models.Version.model_fields)  # never the storage path nor the transfer
    assert api_models.ProductDetail.model_validate(detail).versions[0].current
    me = await o.api.json("/v1/me", who="pi")
    assert api_models.Me.model_validate(me).model_dump(mode="json") == me  # read and written back, the same text


async def test_each_search_filter_selects_exactly_the_products_it_describes(
    api: ApiClient, db: Database, storage: Path, unique: str
) -> None:
    cataloguer = Cataloguer(api.public_url)

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    def product(name: str, *, filename: str, archived_at: str, **options: Any) -> FileArchived:
        meta = options.pop("metadata", {})
        data = archived(f"X.{unique}.{name}", release_date=PAST, metadata=meta, **options)
        return data.model_copy(update={"original_filename": filename, "archived_at": at(archived_at)})

    products = {
        "A": product(
            "A",
            propid=f"PA{unique}",
            ra=10.0,
            dec=20.0,
            filename="hires_0001.fits",
            archived_at="2026-03-15T09:00",
            metadata={"target_name": "HD 189733", "observed_at": "2026-03-15T08:00:00Z", "exptime_s": 600},
        ),
        "B": product(
            "B",
            propid=f"PA{unique}",
            instrument="KCWI",
            level="1",
            ra=10.004,  # 0.0038 degrees from A
            dec=20.0,
            filename="kcwi%0002.fits",
            archived_at="2026-03-16T03:00",
            metadata={"target_name": "Arc lamp", "intent": "calibration", "observed_at": "2026-03-16T02:00:00Z"},
        ),
        "C": product(
            "C",
            propid=f"PC{unique}",
            mission="JWST",
            instrument="NIRCAM",
            level="2b",
            ra=359.9995,
            dec=-30.0,
            filename="jw01011_cal.fits",
            archived_at="2026-04-01T12:00",
            metadata={"target_name": "hd 209458", "observed_at": "2026-04-01T00:00:00Z"},
        ),
        "D": product(
            "D",
            propid=f"PA{unique}",
            ra=None,
            dec=None,
            filename="hiresx0001.fits",
            archived_at="2026-03-20T00:00",
            metadata={"target_name": None, "observed_at": None},
        ),
    }
    for data in products.values():
        await archive_file(db, storage, data, data.archive_id.encode(), cataloguer)
    cases: list[tuple[list[tuple[str, str]], str]] = [
        ([("mission", "keck")], "ABD"),
        ([("mission", "JWST")], "C"),
        ([("propid", f"PC{unique}")], "C"),
        ([("instrument", "HIRES")], "AD"),
        ([("instrument", "kcwi"), ("instrument", "nircam")], "BC"),
        ([("level", "0")], "AD"),
        ([("level", "2b")], "C"),
        ([("level", "2B")], ""),  # levels are the mission's own words, exactly
        ([("intent", "calibration")], "B"),
        ([("t_min", "2026-03-16")], "BC"),  # products without an observation time never match a time range
        ([("t_max", "2026-03-15T08:05:00Z")], "A"),
        ([("t_min", "2026-03-15T08:05:00Z"), ("t_max", "2026-03-15T08:06:00Z")], "A"),  # within A's exposure
        ([("t_min", str(to_mjd(at("2026-03-31T00:00"))))], "C"),
        ([("archived_since", "2026-03-16T00:00:00Z")], "BCD"),
        ([("archived_since", "2026-03-16T04:00:00+01:00")], "BCD"),  # 03:00 UTC
        ([("filename", "hires_0001*")], "A"),  # '_' is no wildcard
        ([("filename", "HIRES?0001.FITS")], "AD"),
        ([("filename", "*%*")], "B"),  # nor is '%'
        ([("filename", "*.fits")], "ABCD"),
        ([("target", "hd")], "AC"),
        ([("target", "%")], ""),
        ([("ra", "10"), ("dec", "20"), ("radius", "0.001")], "A"),
        ([("ra", "10"), ("dec", "20"), ("radius", "0.01")], "AB"),
        ([("ra", "0.0005"), ("dec", "-30"), ("radius", "0.01")], "C"),  # across ra = 0
        ([("mission", "KECK"), ("level", "0"), ("ra", "10"), ("dec", "20"), ("radius", "5")], "A"),
    ]
    wrong = {}
    for params, wanted in cases:
        found = await api.search_ids(params=params)
        names = "".join(sorted(a.rsplit(".", 1)[1] for a in found))
        if names != wanted:
            wrong[str(params)] = (names, wanted)
    assert wrong == {}


async def test_paging_returns_every_visible_product_exactly_once_while_products_arrive(
    api: ApiClient, db: Database, unique: str
) -> None:
    cataloguer = Cataloguer(api.public_url)
    public: list[str] = []

    async def catalogue_products(writer: int) -> None:
        for i in range(30):
            proprietary = i % 3 == 0
            data = archived(
                f"HI.{unique}.{writer}.{i}", propid=f"P{unique}", release_date=FAR_FUTURE if proprietary else PAST
            )
            async with db.transaction() as conn:
                await cataloguer.catalogue(conn, data)
            if not proprietary:
                public.append(data.archive_id)
            await asyncio.sleep(0)  # let the reader in between

    writers = asyncio.gather(*(catalogue_products(w) for w in range(4)))
    read: list[str] = []
    cursor: str | None = None
    pages_while_writing = 0
    while True:
        finished = writers.done()
        body = await api.json("/v1/products", params={"limit": "7", **({"cursor": cursor} if cursor else {})})
        read += [p["archive_id"] for p in body["products"]]
        pages_while_writing += not finished
        cursor = body["next_cursor"]
        if finished and not body["more"]:
            break
    await writers

    assert len(public) == 80
    assert pages_while_writing > 3  # the reader did page while products arrived
    assert [a for a, n in Counter(read).items() if n > 1] == []
    assert sorted(read) == sorted(public)
    # The cursor of the last page is where to ask later for "everything since": nothing yet.
    assert (await api.json("/v1/products", params={"cursor": cursor}))["products"] == []


# --- downloads --------------------------------------------------------------------------------------------


async def test_downloads_serve_ranges_and_versions_with_their_digest(
    api: ApiClient, db: Database, storage: Path, unique: str
) -> None:
    cataloguer = Cataloguer(api.public_url)
    first, second = os.urandom(300_000), os.urandom(200_000)
    archive_id = f"HI.{unique}.range"
    await archive_file(db, storage, archived(archive_id, propid=f"P{unique}", release_date=PAST), first, cataloguer)
    await archive_file(
        db, storage, archived(archive_id, propid=f"P{unique}", release_date=PAST, version=2), second, cataloguer
    )

    def digest(content: bytes) -> str:
        return f"sha-256=:{base64.b64encode(hashlib.sha256(content).digest()).decode()}:"

    whole = await api.get(f"/v1/files/{archive_id}")
    assert whole.status == 200
    assert await whole.read() == second
    assert whole.headers["Content-Length"] == str(len(second))
    assert whole.headers["Repr-Digest"] == digest(second)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Type"] == "application/fits"
    assert whole.headers["Skyport-Version"] == "2"
    assert f'filename="{archive_id.lower()}.fits"' in whole.headers["Content-Disposition"]

    size = len(first)
    for asked, start, end in [
        ("bytes=0-99", 0, 100),
        ("bytes=1000-", 1000, size),
        ("bytes=-500", size - 500, size),
        ("bytes=299990-400000", 299990, size),
    ]:
        part = await api.get(f"/v1/files/{archive_id}", params={"version": "1"}, headers={"Range": asked})
        assert (part.status, await part.read()) == (206, first[start:end]), asked
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", asked
        assert part.headers["Content-Length"] == str(end - start), asked
        assert part.headers["Repr-Digest"] == digest(first), asked  # of the whole file, as RFC 9530 has it

    # A download cut short resumes where it stopped, and the pieces make the file the digest describes.
    head = await (await api.get(f"/v1/files/{archive_id}?version=1", headers={"Range": "bytes=0-123455"})).read()
    tail = await (await api.get(f"/v1/files/{archive_id}?version=1", headers={"Range": f"bytes={len(head)}-"})).read()
    assert digest(head + tail) == digest(first)

    beyond = await api.get(f"/v1/files/{archive_id}", params={"version": "1"}, headers={"Range": f"bytes={size}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"

    missing = await api.get(f"/v1/files/{archive_id}", params={"version": "3"})
    assert (missing.status, (await missing.json())["current_version"]) == (404, 2)
    page = await api.json(f"/v1/products/{archive_id}")
    assert [(v["version"], v["current"], v["sha256"]) for v in page["versions"]] == [
        (1, False, hashlib.sha256(first).hexdigest()),
        (2, True, hashlib.sha256(second).hexdigest()),
    ]
    assert page["access_url"] == f"{api.public_url}/v1/files/{archive_id}?version=2"
    assert "storage_path" not in page["versions"][0]


async def test_a_file_missing_from_storage_is_reported_not_served(
    api: ApiClient, db: Database, storage: Path, unique: str
) -> None:
    data = await archive_file(
        db,
        storage,
        archived(f"HI.{unique}.lost", propid=f"P{unique}", release_date=PAST),
        b"x" * 100,
        Cataloguer("http://x"),
    )
    (storage / data.storage_path).unlink()

    response = await api.get(f"/v1/files/{data.archive_id}")

    assert response.status == 503
    assert "not readable in archive storage" in (await response.json())["error"]


async def run_script(script: str, folder: Path, token: str | None) -> tuple[int, str]:
    """Run a download script with sh in ``folder`` (the event loop keeps serving the API meanwhile)."""
    await asyncio.to_thread(folder.mkdir, exist_ok=True)
    await asyncio.to_thread((folder / "get.sh").write_text, script)
    env = {"PATH": os.environ["PATH"], **({"SKYPORT_TOKEN": token} if token else {})}
    process = await asyncio.create_subprocess_exec(
        "sh", "get.sh", cwd=folder, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_the_download_script_fetches_verifies_and_resumes_a_search_result(
    observatory: Observatory, tmp_path: Path
) -> None:
    o = observatory
    response = await o.api.get("/v1/products/download-script", who="pi", params={"propid": o.propid})
    script = await response.text()
    assert response.status == 200
    assert response.content_type == "text/x-shellscript"
    assert o.api.tokens["pi"] not in script
    folder = tmp_path / "downloads"
    names = {a.archive_id: local_name(a.archive_id, a.original_filename) for a in (o.secret, o.public)}

    code, output = await run_script(script, folder, o.api.tokens["pi"])

    assert code == 0, output
    assert {p.name for p in folder.iterdir()} == {"get.sh", *names.values()}
    assert all((folder / name).read_bytes() == o.content[a] for a, name in names.items())

    # A partial file is resumed, a wrong one replaced, a good one left alone.
    secret, public = folder / names[o.secret.archive_id], folder / names[o.public.archive_id]
    secret.write_bytes(o.content[o.secret.archive_id][:1000])
    public.write_bytes(b"\0" * len(o.content[o.public.archive_id]))
    code, output = await run_script(script, folder, o.api.tokens["pi"])
    assert code == 0, output
    assert secret.read_bytes() == o.content[o.secret.archive_id]
    assert public.read_bytes() == o.content[o.public.archive_id]

    # Without the token, the proprietary file is refused and the script says so.
    code, output = await run_script(script, tmp_path / "anonymous", None)
    assert code != 0
    assert f"FAILED: {names[o.secret.archive_id]}" in output
    assert (tmp_path / "anonymous" / names[o.public.archive_id]).read_bytes() == o.content[o.public.archive_id]
    assert not (tmp_path / "anonymous" / names[o.secret.archive_id]).exists()


async def test_a_script_for_a_long_result_says_where_the_rest_is(db: Database, storage: Path, unique: str) -> None:
    async with serve_catalog_api(db, storage, script_max_files=2) as api:
        cataloguer = Cataloguer(api.public_url)
        for i in range(3):
            await archive_file(
                db, storage, archived(f"HI.{unique}.{i}", propid=f"P{unique}", release_date=PAST), b"%d" % i, cataloguer
            )
        first = await (await api.get("/v1/products/download-script", params={"mission": "KECK"})).text()
        assert [f"HI.{unique}.{i}" in first for i in range(3)] == [True, True, False]
        next_url = first.split("their script: ", 1)[1].split("'", 1)[0]
        rest = await (await api.client.session.get(next_url)).text()
        assert [f"HI.{unique}.{i}" in rest for i in range(3)] == [False, False, True]
        assert "their script" not in rest


# --- bad input --------------------------------------------------------------------------------------------


async def catalog_state(db: Database) -> dict[str, Any]:
    row = await db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM products) AS products, "
        "(SELECT count(*) FROM products WHERE public_since IS NOT NULL) AS public, "
        "(SELECT max(seq) FROM products) AS last_change, "
        "(SELECT array_agg(row(mission, propid, user_id, role)::text ORDER BY mission, propid, user_id) "
        " FROM program_members) AS members, "
        "(SELECT count(*) FROM membership_changes) AS membership_changes, "
        "(SELECT count(*) FROM api_tokens) AS tokens, "
        "(SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL) AS active_tokens, "
        "(SELECT count(*) FROM outbox) AS events"
    )
    return dict(row)


async def test_bad_input_gets_a_clear_error_and_changes_nothing(observatory: Observatory) -> None:
    o = observatory
    products, files = "/v1/products", f"/v1/files/{o.public.archive_id}"
    members = f"/v1/programs/KECK/{o.propid}/members"
    cone = {"ra": "10", "dec": "20"}
    cases: list[tuple[str, str, str, dict[str, Any], int, str | None, str]] = [
        # who, method, path, request options, status, the parameter named, words in the error
        ("anonymous", "GET", products, {"params": {"radius": "1"}}, 400, "ra", "ra, dec and radius together"),
        ("anonymous", "GET", products, {"params": {**cone, "radius": "11"}}, 400, "radius", "at most 10 degrees"),
        ("anonymous", "GET", products, {"params": {**cone, "radius": "0"}}, 400, "radius", "above 0"),
        ("anonymous", "GET", products, {"params": {**cone, "radius": "-1"}}, 400, "radius", "above 0"),
        ("anonymous", "GET", products, {"params": {**cone, "radius": "wide"}}, 400, "radius", "number of degrees"),
        ("anonymous", "GET", products, {"params": {**cone, "ra": "360", "radius": "1"}}, 400, "ra", "[0, 360)"),
        ("anonymous", "GET", products, {"params": {**cone, "ra": "nan", "radius": "1"}}, 400, "ra", "number"),
        ("anonymous", "GET", products, {"params": {**cone, "dec": "-91", "radius": "1"}}, 400, "dec", "[-90, 90]"),
        ("anonymous", "GET", products, {"params": {"limit": "0"}}, 400, "limit", "from 1 to 1000"),
        ("anonymous", "GET", products, {"params": {"limit": "1001"}}, 400, "limit", "from 1 to 1000"),
        ("anonymous", "GET", products, {"params": {"limit": "ten"}}, 400, "limit", "integer"),
        ("anonymous", "GET", products, {"params": {"cursor": "bm9wZQ"}}, 400, "cursor", "not one this API gave out"),
        ("anonymous", "GET", products, {"params": {"t_min": "yesterday"}}, 400, "t_min", "MJD"),
        ("anonymous", "GET", products, {"params": {"t_min": "61200", "t_max": "61100"}}, 400, "t_min", "after t_max"),
        ("anonymous", "GET", products, {"params": {"archived_since": "last week"}}, 400, "archived_since", "ISO 8601"),
        ("anonymous", "GET", products, {"params": {"intent": "observing"}}, 400, "intent", "science or calibration"),
        ("anonymous", "GET", products, {"params": {"radious": "1"}}, 400, "radious", "unknown parameter"),
        ("anonymous", "GET", products, {"params": [("ra", "1"), ("ra", "2")]}, 400, "ra", "give it once"),
        ("anonymous", "GET", products, {"params": {"target": ""}}, 400, "target", "must not be empty"),
        ("anonymous", "GET", products, {"params": {"count": "maybe"}}, 400, "count", "true or false"),
        ("anonymous", "GET", f"{products}/download-script", {"params": {"count": "true"}}, 400, "count", "unknown"),
        ("anonymous", "GET", f"{products}/download-script", {"params": {**cone, "radius": "20"}}, 400, "radius", "10"),
        ("pi", "GET", f"{products}/HI.no.such.file", {}, 404, None, "no product HI.no.such.file"),
        ("pi", "GET", f"{products}/{o.public.archive_id}", {"params": {"fields": "all"}}, 400, "fields", "unknown"),
        ("pi", "GET", "/v1/files/HI.no.such.file", {}, 404, None, "no product HI.no.such.file"),
        ("pi", "GET", files, {"params": {"version": "0"}}, 400, "version", "integer from 1"),
        ("pi", "GET", files, {"params": {"version": "latest"}}, 400, "version", "integer from 1"),
        ("pi", "GET", files, {"params": {"version": "2"}}, 404, None, "no version 2"),
        ("anonymous", "GET", "/v1/me", {}, 401, None, "needs a token"),
        ("not-a-token", "GET", "/v1/me", {}, 401, None, "unknown or revoked"),
        ("not-a-token", "GET", products, {}, 401, None, "unknown or revoked"),  # public data, but a bad token
        ("anonymous", "GET", products, {"headers": {"Authorization": "Basic cGk6cGk="}}, 401, None, "Bearer <token>"),
        ("anonymous", "GET", products, {"headers": {"Authorization": "Bearer "}}, 401, None, "Bearer <token>"),
        ("anonymous", "GET", members, {}, 401, None, "needs a token"),
        ("stranger", "GET", members, {}, 404, None, "no program"),
        ("collaborator", "PUT", f"{members}/{o.user('stranger')}", {"json": {"role": "coi"}}, 403, None, "only the PI"),
        ("other-pi", "DELETE", f"{members}/{o.user('coi')}", {}, 403, None, "only the PI"),
        ("pi", "PUT", f"{members}/{o.user('stranger')}", {"json": {"role": "observer"}}, 400, "role", "one of"),
        ("pi", "PUT", f"{members}/{o.user('stranger')}", {"json": {"role": "coi", "x": 1}}, 400, "x", "unknown field"),
        ("pi", "PUT", f"{members}/{o.user('stranger')}", {"data": b"role=coi"}, 400, None, "not valid JSON"),
        ("pi", "PUT", f"{members}/{o.user('stranger')}", {"json": ["coi"]}, 400, None, "JSON object"),
        ("pi", "PUT", f"{members}/{o.user('stranger')}", {}, 400, None, "needs a JSON body"),
        ("pi", "PUT", f"{members}/nobody-{o.unique}", {"json": {"role": "coi"}}, 404, None, "no user"),
        (
            "pi",
            "PUT",
            f"/v1/programs/KECK/{o.other}/members/{o.user('stranger')}",
            {"json": {"role": "coi"}},
            403,
            None,
            "only the PI",
        ),
        (
            "pi",
            "PUT",
            f"/v1/programs/KECK/no%20such/members/{o.user('stranger')}",
            {"json": {"role": "coi"}},
            400,
            "propid",
            "letters, digits",
        ),
        ("pi", "DELETE", f"{members}/{o.user('stranger')}", {}, 404, None, "not a member"),
        ("stranger", "POST", f"/v1/programs/KECK/{o.propid}/release", {}, 403, None, "only the PI"),
        (
            "pi",
            "POST",
            f"/v1/programs/KECK/{o.propid}/release",
            {"json": {"archive_ids": "all"}},
            400,
            "archive_ids",
            "list",
        ),
        ("admin", "POST", "/v1/programs/KECK/NOPE/release", {}, 404, None, "no program"),
        ("anonymous", "POST", "/v1/tokens", {}, 401, None, "needs a token"),
        ("pi", "POST", "/v1/tokens", {"json": {"label": "x" * 101}}, 400, "label", "at most 100"),
        ("pi", "DELETE", "/v1/tokens/not-an-id", {}, 400, "token_id", "16 hexadecimal digits"),
        ("pi", "DELETE", "/v1/tokens/0123456789abcdef", {}, 404, None, "no active token"),
        ("pi", "GET", "/v1/nothing", {}, 404, None, "no such endpoint"),
        ("pi", "POST", products, {}, 405, None, "method not allowed"),
    ]
    before = await catalog_state(o.db)
    wrong = {}
    for who, method, path, options, status, parameter, words in cases:
        response = await o.api.request(method, path, who=who, **options)
        body = await response.json()
        answer = (response.status, body.get("parameter"), words in body.get("error", ""), body.get("code"))
        if answer != (status, parameter, True, _code_of(method, status, words)):
            wrong[f"{who} {method} {path} {options}"] = (response.status, body)
    assert wrong == {}
    assert await catalog_state(o.db) == before
    refused_searches = o.api.registry.get_sample_value(
        "skyport_catalog_api_requests_total", {"route": "/v1/products", "method": "GET", "status": "400"}
    )
    assert refused_searches == sum(1 for c in cases if c[1:3] == ("GET", products) and c[4] == 400)


_CODE_OF_WORDS = {
    "ra, dec and radius together": ErrorCode.CONFLICTING_PARAMETERS,
    "after t_max": ErrorCode.CONFLICTING_PARAMETERS,
    "not one this API gave out": ErrorCode.UNKNOWN_CURSOR,
    "letters, digits": ErrorCode.BAD_PARAMETER,  # a path parameter of a request with a body
    "16 hexadecimal digits": ErrorCode.BAD_PARAMETER,
}
_CODE_OF_STATUS = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
}


def _code_of(method: str, status: int, words: str) -> str:
    """The code a refusal in the table above must carry."""
    if words in _CODE_OF_WORDS:
        return _CODE_OF_WORDS[words].value
    if status == 400:
        return (ErrorCode.BAD_BODY if method in ("PUT", "POST") else ErrorCode.BAD_PARAMETER).value
    return _CODE_OF_STATUS[status].value
