"""Every authorisation decision of the catalog, in one place, built on one access rule: who may see a product
(its metadata, its files and its counts), who may see and change a program's members, who may release its
data early, who may follow the whole catalog. Services ask this module; handlers and commands never decide.

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

The program rules follow from the same membership rows: members see each other; the PI (or an administrator)
manages the program (members, early release); only an administrator, or an administration command
(``actor=None``), names or removes a PI; only an administrator reads the catalog position (a gateway's service
account, which sees every change). :func:`rights_in` tells a viewer what those rules let them do in a program
(the members answer carries it), so that a page shows the doors that open and never weighs a role itself.

Visibility follows ``public_since``, not the date itself: between midnight of the release date and the
scheduler's next pass (``SKYPORT_RELEASE_INTERVAL``) data stay proprietary, so that they become visible in
the same commit that announces them (``dataset.public``) and takes their place in the catalog order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import asyncpg

from services.catalog.errors import NotAllowed, NotSignedIn, UnknownProgram, UnknownUser
from services.catalog.storage.programs import Membership, ProgramStore
from services.catalog.storage.sql import Params, check_alias
from services.catalog.storage.users import UserStore

Role = Literal["pi", "coi", "collaborator"]
ROLES: tuple[Role, ...] = ("pi", "coi", "collaborator")

__all__ = [  # the errors are the decisions' answers, so callers may take them from here too
    "ANONYMOUS",
    "ROLES",
    "NotAllowed",
    "NotSignedIn",
    "ProgramRights",
    "Role",
    "UnknownProgram",
    "UnknownUser",
    "Viewer",
]


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


async def viewer_named(conn: asyncpg.Connection, username: str) -> Viewer | None:
    """The viewer a user would be if they asked themselves (usernames are lower-case); None for an unknown user."""
    user = await UserStore(conn).by_username(username.lower())
    return None if user is None else Viewer(user.user_id, user.username, user.is_admin)


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
    return _may_release_early(viewer, await role_in(conn, viewer, mission, propid))


def _may_change_members(actor: Viewer | None, actor_role: str | None, *, touching_pi: bool) -> bool:
    """The rule for changing a program's members, given the actor's role in it: an administrator, or an
    administration command (``actor=None``), changes anything; the PI every membership but a PI's; nobody else.

    ``touching_pi``: the change names, demotes or removes the program's PI.
    """
    if actor is None or actor.is_admin:
        return True
    return actor_role == "pi" and not touching_pi


def _may_release_early(viewer: Viewer, role: str | None) -> bool:
    return viewer.is_admin or role == "pi"


@dataclass(frozen=True)
class ProgramRights:
    """What a viewer may do in one program, by the rules the checks below enforce: what a page may offer."""

    grantable_roles: tuple[Role, ...]
    """The roles the viewer may grant, or change a membership to (empty: they may change no membership)."""
    removable_roles: tuple[Role, ...]
    """The roles whose holders the viewer may remove."""
    may_release_early: bool

    @property
    def may_manage_members(self) -> bool:
        """Whether the viewer may change any membership at all."""
        return bool(self.grantable_roles or self.removable_roles)

    def may_remove(self, member_role: str) -> bool:
        """Whether the viewer may remove a member who holds ``member_role``."""
        return member_role in self.removable_roles


async def rights_in(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> ProgramRights:
    """What the viewer may do in the program (nothing, for an anonymous viewer or a stranger).

    Built from the same rules as :func:`check_may_change_members` and :func:`check_may_release_early`, so that
    what a page offers is what the catalog then allows.
    """
    if viewer.is_anonymous:
        return ProgramRights((), (), may_release_early=False)
    role = await role_in(conn, viewer, mission, propid)
    changeable = tuple(r for r in ROLES if _may_change_members(viewer, role, touching_pi=r == "pi"))
    # Granting a role and removing its holder touch the same memberships, so one rule answers both today;
    # they stay two answers so that a rule that tells them apart (a co-investigator who invites) fits here.
    return ProgramRights(changeable, changeable, may_release_early=_may_release_early(viewer, role))


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


# --- the decisions services take (each raises the refusal, with words for whoever asked) -----------------


def require_user(viewer: Viewer) -> Viewer:
    """The viewer, who must be a user (an action on one's own account or programs); :class:`NotSignedIn` else."""
    if viewer.is_anonymous:
        raise NotSignedIn("this endpoint needs a token: Authorization: Bearer <token>")
    return viewer


def check_may_follow_catalog(viewer: Viewer) -> None:
    """Only an administrator (a gateway's service account) reads where the catalog order stands."""
    require_user(viewer)
    if not viewer.is_admin:
        raise NotAllowed("the catalog position is for administrators (a gateway's service account)")


def check_may_ask_for_others(viewer: Viewer) -> None:
    """Only an administrator (a service account such as the notifier's) asks what another user may see: the answer
    tells which proprietary products exist, so to anyone else it would leak what the rule hides."""
    require_user(viewer)
    if not viewer.is_admin:
        raise NotAllowed("what another user may see is for administrators (a service account such as the notifier)")


async def check_may_see_members(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> None:
    """Members see each other, administrators every program; to anyone else the program does not exist."""
    require_user(viewer)
    role = await role_in(conn, viewer, mission, propid)
    if await ProgramStore(conn).get(mission, propid) is None or (role is None and not viewer.is_admin):
        raise UnknownProgram(f"no program {mission}/{propid} among yours")


async def check_may_change_members(
    conn: asyncpg.Connection, actor: Viewer | None, mission: str, propid: str, *, touching_pi: bool
) -> None:
    """An administrator, or an administration command (``actor=None``), changes anything in a program that
    exists; its PI grants, changes and removes the other roles; nobody else changes anything.

    ``touching_pi``: the change names, demotes or removes the program's PI.
    """
    if actor is None or actor.is_admin:
        if await ProgramStore(conn).get(mission, propid) is None:
            raise UnknownProgram(f"no program {mission}/{propid}")
        return
    if touching_pi:  # nobody but an administrator, whatever their role: no need to read it
        raise NotAllowed(f"only an administrator may name or remove the PI of {mission}/{propid}")
    role = await role_in(conn, actor, mission, propid)
    if not _may_change_members(actor, role, touching_pi=False):
        raise NotAllowed(f"only the PI of {mission}/{propid} or an administrator may change its members")


async def check_may_release_early(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> None:
    """The PI, or an administrator, releases a program's data early; :class:`UnknownProgram` (to an
    administrator) when there is no such program."""
    if not await may_manage(conn, viewer, mission, propid):
        raise NotAllowed(f"only the PI of {mission}/{propid} or an administrator may release its data early")
    if await ProgramStore(conn).get(mission, propid) is None:
        raise UnknownProgram(f"no program {mission}/{propid}")
