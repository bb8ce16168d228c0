"""The access rule, membership changes, early release and the administration commands, on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from services.catalog import cli
from services.catalog.access import (
    ANONYMOUS,
    NotAllowed,
    UnknownProgram,
    UnknownUser,
    Viewer,
    can_see_product,
    is_pi,
    programs_visible_to,
    viewer_for_token,
    visible_condition,
)
from services.catalog.cataloguing import Cataloguer
from services.catalog.membership import MembershipRefused, grant, revoke
from services.catalog.releases import release_early
from services.catalog.storage.sql import Params
from skyport.db import Database
from skyport.events import decode_event
from skyport.http import hash_token
from tests.support.catalog import PUBLIC_URL, archived, catalog_database


@pytest.fixture
async def db(database_url: str, unique: str) -> AsyncIterator[Database]:
    async with catalog_database(database_url, f"catalog_{unique}") as db:
        yield db


@dataclass
class Observatory:
    """One program with its people, and products of it and of another program."""

    db: Database
    mission: str
    propid: str
    other_propid: str
    public: str
    proprietary: str
    others_proprietary: str
    tokens: dict[str, str]

    async def viewer(self, who: str) -> Viewer:
        if who == "anonymous":
            return ANONYMOUS
        async with self.db.pool.acquire() as conn:
            viewer = await viewer_for_token(conn, self.tokens[who])
        assert viewer is not None
        return viewer


@pytest.fixture
async def observatory(db: Database, unique: str) -> Observatory:
    propid, other = f"P{unique}", f"Q{unique}"
    tokens = {}
    for who in ("pi", "collaborator", "former", "stranger", "admin", "other-pi"):
        await cli.add_user(db, f"{who}-{unique}", admin=who == "admin")
        tokens[who] = await cli.issue_token(db, f"{who}-{unique}")
    await cli.add_program(db, "keck", propid, title="Exoplanet atmospheres", pi=f"pi-{unique}")
    await cli.add_program(db, "KECK", other, pi=f"other-pi-{unique}")
    await cli.grant_role(db, "KECK", propid, f"collaborator-{unique}")
    await cli.grant_role(db, "KECK", propid, f"former-{unique}", "coi")
    await cli.revoke_role(db, "KECK", propid, f"former-{unique}")
    cataloguer = Cataloguer(PUBLIC_URL, today=lambda: date(2026, 6, 1))
    files = {
        "public": archived(f"HI.{unique}.public", propid=propid, release_date=date(2026, 1, 1)),
        "proprietary": archived(f"HI.{unique}.private", propid=propid, release_date=date(2027, 9, 15)),
        "others": archived(f"HI.{unique}.others", propid=other, release_date=date(2027, 9, 15)),
    }
    for data in files.values():
        async with db.transaction() as conn:
            await cataloguer.catalogue(conn, data)
    return Observatory(
        db,
        "KECK",
        propid,
        other,
        files["public"].archive_id,
        files["proprietary"].archive_id,
        files["others"].archive_id,
        tokens,
    )


ACCESS = [
    # viewer,        sees the public product, sees the proprietary one
    ("anonymous", True, False),
    ("stranger", True, False),
    ("collaborator", True, True),
    ("pi", True, True),
    ("admin", True, True),
    ("former", True, False),  # a revoked collaborator
]


async def test_every_door_applies_one_access_rule(observatory: Observatory) -> None:
    mismatches = []
    async with observatory.db.pool.acquire() as conn:
        for who, sees_public, sees_proprietary in ACCESS:
            viewer = await observatory.viewer(who)
            expected = {observatory.public} | ({observatory.proprietary} if sees_proprietary else set())
            if who == "admin":
                expected.add(observatory.others_proprietary)

            params = Params([observatory.propid, observatory.other_propid])
            where = f"p.propid = ANY($1) AND {visible_condition(viewer, params)}"
            page = await conn.fetch(f"SELECT archive_id FROM products p WHERE {where} ORDER BY seq", *params.values)
            count = await conn.fetchval(f"SELECT count(*) FROM products p WHERE {where}", *params.values)
            doors: dict[str, Any] = {
                "search": {r["archive_id"] for r in page},
                "count": count,
                "product page, public": await can_see_product(conn, viewer, observatory.public),
                "product page, proprietary": await can_see_product(conn, viewer, observatory.proprietary),
                "product page, another program's": await can_see_product(conn, viewer, observatory.others_proprietary),
                "programs": {m.propid for m in await programs_visible_to(conn, viewer)} & {observatory.propid},
            }
            wanted: dict[str, Any] = {
                "search": expected,
                "count": len(expected),
                "product page, public": sees_public,
                "product page, proprietary": sees_proprietary,
                "product page, another program's": who == "admin",
                "programs": {observatory.propid} if sees_proprietary else set(),
            }
            mismatches += [(who, door, doors[door], wanted[door]) for door in wanted if doors[door] != wanted[door]]
    assert mismatches == []


async def test_an_unknown_product_looks_like_a_hidden_one(observatory: Observatory) -> None:
    async with observatory.db.pool.acquire() as conn:
        for who in ("anonymous", "admin"):
            assert await can_see_product(conn, await observatory.viewer(who), "HI.no.such.file") is False


async def test_a_revoked_collaborator_or_token_loses_access_at_once(observatory: Observatory, unique: str) -> None:
    collaborator = await observatory.viewer("collaborator")
    pi = await observatory.viewer("pi")
    async with observatory.db.pool.acquire() as reader:
        assert await can_see_product(reader, collaborator, observatory.proprietary)

        async with observatory.db.transaction() as conn:
            await revoke(conn, pi, observatory.mission, observatory.propid, f"collaborator-{unique}")

        assert not await can_see_product(reader, collaborator, observatory.proprietary)
        await cli.revoke_token(observatory.db, token=observatory.tokens["pi"])
        assert await viewer_for_token(reader, observatory.tokens["pi"]) is None
        assert await viewer_for_token(reader, "not-a-token") is None


async def test_a_pi_grants_and_removes_collaborators_and_each_change_is_announced(
    observatory: Observatory, unique: str
) -> None:
    pi = await observatory.viewer("pi")
    newcomer = f"newcomer-{unique}"
    await cli.add_user(observatory.db, newcomer)
    before = await observatory.db.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'access.changed'")

    async with observatory.db.transaction() as conn:
        granted = await grant(conn, pi, "keck", observatory.propid, newcomer)
        again = await grant(conn, pi, "KECK", observatory.propid, newcomer)  # nothing changes
        promoted = await grant(conn, pi, "KECK", observatory.propid, newcomer, "coi")
        removed = await revoke(conn, pi, "KECK", observatory.propid, newcomer)
        assert await revoke(conn, pi, "KECK", observatory.propid, newcomer) is None

    assert again is None
    assert [(c.role, c.change) for c in (granted, promoted, removed) if c] == [
        ("collaborator", "granted"),
        ("coi", "granted"),
        (None, "revoked"),
    ]
    rows = await observatory.db.pool.fetch(
        "SELECT body, routing_key, subject FROM outbox WHERE event_type = 'access.changed' ORDER BY id"
    )
    rows = rows[before:]
    events = [decode_event(bytes(r["body"])) for r in rows]
    assert [(e.data.username, e.data.role, e.data.change, e.data.changed_by) for e in events] == [
        (newcomer, "collaborator", "granted", f"pi-{unique}"),
        (newcomer, "coi", "granted", f"pi-{unique}"),
        (newcomer, None, "revoked", f"pi-{unique}"),
    ]
    assert {r["routing_key"] for r in rows} == {f"access.changed.keck.{observatory.propid.lower()}"}
    assert {r["subject"] for r in rows} == {f"KECK/{observatory.propid}"}
    history = await observatory.db.pool.fetch(
        "SELECT role, change, changed_by FROM membership_changes WHERE username = $1 ORDER BY change_id", newcomer
    )
    assert [tuple(r) for r in history] == [
        ("collaborator", "granted", f"pi-{unique}"),
        ("coi", "granted", f"pi-{unique}"),
        (None, "revoked", f"pi-{unique}"),
    ]


@pytest.mark.parametrize(
    ("actor", "action", "error"),
    [
        ("stranger", ("grant", "newcomer", "collaborator"), NotAllowed),  # not the PI
        ("collaborator", ("grant", "newcomer", "collaborator"), NotAllowed),  # a member, not the PI
        ("collaborator", ("revoke", "pi", None), NotAllowed),
        ("pi", ("grant", "newcomer", "pi"), NotAllowed),  # only an administrator names a PI
        ("pi", ("revoke", "pi", None), NotAllowed),  # nor removes one
        ("admin", ("grant", "newcomer", "pi"), MembershipRefused),  # one PI per program
        ("admin", ("grant", "nobody", "collaborator"), UnknownUser),
        ("pi", ("grant", "newcomer", "observer"), MembershipRefused),  # no such role
    ],
)
async def test_membership_changes_that_are_refused_change_nothing(
    observatory: Observatory, unique: str, actor: str, action: tuple[str, str, str | None], error: type[Exception]
) -> None:
    await cli.add_user(observatory.db, f"newcomer-{unique}")
    viewer = await observatory.viewer(actor)
    verb, who, role = action
    before = await observatory.db.pool.fetchval("SELECT count(*) FROM outbox")

    async def change() -> None:
        async with observatory.db.transaction() as conn:
            if verb == "grant":
                await grant(conn, viewer, "KECK", observatory.propid, f"{who}-{unique}", role)  # type: ignore[arg-type]
            else:
                await revoke(conn, viewer, "KECK", observatory.propid, f"{who}-{unique}")

    with pytest.raises(error):
        await change()

    assert await observatory.db.pool.fetchval("SELECT count(*) FROM outbox") == before
    async with observatory.db.pool.acquire() as conn:
        assert await is_pi(conn, await observatory.viewer("pi"), "KECK", observatory.propid)


async def test_an_administrator_may_change_any_membership_but_not_of_a_program_that_does_not_exist(
    observatory: Observatory, unique: str
) -> None:
    admin = await observatory.viewer("admin")
    async with observatory.db.transaction() as conn:
        await revoke(conn, admin, "KECK", observatory.propid, f"pi-{unique}")
        await grant(conn, admin, "KECK", observatory.propid, f"collaborator-{unique}", "pi")
    async with observatory.db.pool.acquire() as conn:
        assert await is_pi(conn, await observatory.viewer("collaborator"), "KECK", observatory.propid)
        assert not await is_pi(conn, await observatory.viewer("pi"), "KECK", observatory.propid)
    with pytest.raises(UnknownProgram):
        async with observatory.db.transaction() as conn:
            await grant(conn, admin, "KECK", "NOPE", f"pi-{unique}")


async def test_the_pi_releases_data_early_and_it_is_announced_once(observatory: Observatory) -> None:
    pi, collaborator = await observatory.viewer("pi"), await observatory.viewer("collaborator")
    with pytest.raises(NotAllowed):
        async with observatory.db.transaction() as conn:
            await release_early(conn, collaborator, "KECK", observatory.propid, public_url=PUBLIC_URL)

    async with observatory.db.transaction() as conn:
        released = await release_early(conn, pi, "KECK", observatory.propid, public_url=PUBLIC_URL)
    async with observatory.db.transaction() as conn:
        again = await release_early(conn, pi, "KECK", observatory.propid, public_url=PUBLIC_URL)

    assert [f.archive_id for f in released] == [observatory.proprietary]
    assert again == []
    async with observatory.db.pool.acquire() as conn:
        assert await can_see_product(conn, ANONYMOUS, observatory.proprietary)
        assert not await can_see_product(conn, ANONYMOUS, observatory.others_proprietary)
        assert await conn.fetchval("SELECT released_early FROM products WHERE archive_id = $1", observatory.proprietary)
    public = [
        decode_event(bytes(r["body"]))
        for r in await observatory.db.pool.fetch("SELECT body FROM outbox WHERE event_type = 'dataset.public'")
    ]
    # The public product arrived after its release date and was announced then; the early release once.
    assert sorted(tuple(f.archive_id for f in e.data.files) for e in public) == sorted(
        [(observatory.public,), (observatory.proprietary,)]
    )


async def test_the_administration_commands_bootstrap_a_catalog(db: Database, unique: str) -> None:
    await cli.add_user(db, f"root-{unique}", email="root@example.org", admin=True)
    await cli.add_user(db, f"alice-{unique}", display_name="Alice")
    await cli.add_program(db, "jwst", "1011", title="Webb deep field", exclusive_access_months=12, pi=f"alice-{unique}")
    token = await cli.issue_token(db, f"alice-{unique}", label="laptop")
    await cli.issue_token(db, f"alice-{unique}", label="pipeline")

    stored = await db.pool.fetch("SELECT token_sha256, label FROM api_tokens ORDER BY label")
    assert [r["label"] for r in stored] == ["laptop", "pipeline"]
    assert stored[0]["token_sha256"] == hash_token(token)
    assert token not in {r["token_sha256"] for r in stored}
    (summary,) = await cli.list_programs(db)
    assert (summary.program.mission, summary.program.propid, summary.pi, summary.members) == (
        "JWST",
        "1011",
        f"alice-{unique}",
        1,
    )
    assert summary.program.exclusive_access_months == 12
    assert await cli.revoke_token(db, username=f"alice-{unique}", label="pipeline") == 1
    async with db.pool.acquire() as conn:
        alice = await viewer_for_token(conn, token)
    assert alice is not None
    assert alice.username == f"alice-{unique}"
    with pytest.raises(cli.CommandError, match="not a valid username"):
        await cli.add_user(db, "Alice Smith")
    with pytest.raises(UnknownUser):
        await cli.issue_token(db, f"nobody-{unique}")
