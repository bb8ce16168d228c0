"""The access rule, in one place: who may see a product, its metadata, its files and its counts.

A product (with everything about it) is visible to a viewer when

- it is **public**: ``products.public_since`` is set, which happens when its release date has passed (the
  release scheduler) or its PI released it early, or it arrived after its release date; or
- the viewer is a **member** of its program (PI, co-investigator or collaborator); or
- the viewer is an **administrator**.

Anonymous callers see public data only. Membership is read from the database on every query, so a revoked
collaborator loses access with the revoking transaction's commit, and nothing here is cached.

Every door uses :func:`visible_condition` in its SQL (search, counts, product pages, downloads), or one of
the helpers below that are built on it. A product that a viewer may not see is reported exactly like one
that does not exist (:func:`can_see_product` is False for both), so that its existence does not leak.

Visibility follows ``public_since``, not the date itself: between midnight of the release date and the
scheduler's next pass (``SKYPORT_RELEASE_INTERVAL``) data stay proprietary, so that they become visible in
the same commit that announces them (``dataset.public``) and takes their place in the catalog order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import asyncpg

from services.catalog.storage import Membership, Params, ProgramStore, UserStore, check_alias

Role = Literal["pi", "coi", "collaborator"]
ROLES: tuple[Role, ...] = ("pi", "coi", "collaborator")


class NotAllowed(PermissionError):
    """The viewer may not do this (an API answers 403, or 404 where existence must not leak)."""


class UnknownProgram(LookupError):
    """No such program (an API answers 404)."""


class UnknownUser(LookupError):
    """No such user (an API answers 404)."""


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a user (known from their token) or nobody (anonymous)."""

    user_id: int | None = None
    username: str | None = None
    is_admin: bool = False

    @property
    def is_anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Viewer()


async def viewer_for_token(conn: asyncpg.Connection, token: str) -> Viewer | None:
    """The viewer a bearer token stands for; None for an unknown or revoked token (an API answers 401)."""
    user = await UserStore(conn).user_for_token(token)
    return None if user is None else Viewer(user.user_id, user.username, user.is_admin)


def visible_condition(viewer: Viewer, params: Params, alias: str = "p") -> str:
    """The access rule as a SQL condition on the ``products`` row ``alias``, for any query's WHERE clause.

    Adds the viewer's user id to ``params`` when the condition needs it::

        params = Params()
        where = visible_condition(viewer, params)
        await conn.fetch(f"SELECT count(*) FROM products p WHERE {where}", *params.values)
    """
    a = check_alias(alias)
    if viewer.is_admin:
        return "true"
    public = f"{a}.public_since IS NOT NULL"
    if viewer.user_id is None:
        return f"({public})"
    user_id = params.add(viewer.user_id)
    return (
        f"({public} OR EXISTS (SELECT 1 FROM program_members m "
        f"WHERE m.mission = {a}.mission AND m.propid = {a}.propid AND m.user_id = {user_id}))"
    )


async def can_see_product(conn: asyncpg.Connection, viewer: Viewer, archive_id: str) -> bool:
    """Whether the viewer may see this product (its metadata, its versions, its files); False if it does not exist."""
    params = Params(archive_id)
    visible: bool | None = await conn.fetchval(
        f"SELECT {visible_condition(viewer, params)} FROM products p WHERE p.archive_id = $1", *params.values
    )
    return bool(visible)


async def role_in(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> Role | None:
    """The viewer's role in a program, or None (anonymous, or not a member)."""
    if viewer.user_id is None:
        return None
    role = await ProgramStore(conn).role_of(mission, propid, viewer.user_id)
    return cast(Role | None, role)


async def is_pi(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> bool:
    """Whether the viewer is the program's PI."""
    return await role_in(conn, viewer, mission, propid) == "pi"


async def may_manage(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> bool:
    """Whether the viewer may grant and remove members and release data early: the PI, or an administrator."""
    return viewer.is_admin or await is_pi(conn, viewer, mission, propid)


async def programs_visible_to(conn: asyncpg.Connection, viewer: Viewer) -> list[Membership]:
    """The programs whose proprietary data the viewer sees, with the viewer's role in each.

    A member sees their programs; an administrator every program (role None where not a member); an
    anonymous viewer none.
    """
    if viewer.user_id is None:
        return []
    store = ProgramStore(conn)
    if viewer.is_admin:
        return await store.all_as_admin(viewer.user_id)
    return await store.memberships_of(viewer.user_id)
