"""Program membership changes: a PI grants and removes collaborators, an administrator anything.

Who may do what is decided by :func:`services.catalog.access.check_may_change_members`:

- an administrator, or an administration command (``actor=None``): any role for anyone, including the PI;
- the program's PI: grant or change ``coi`` and ``collaborator`` memberships, and remove them;
- nobody else (:class:`~services.catalog.errors.NotAllowed`).

A program has at most one PI: naming another while one is in place is refused (remove the first one).
Every change is recorded in ``membership_changes`` and announced with ``access.changed`` through the outbox,
in the caller's transaction, so that the gateway and the notifier can act the moment it commits. A grant
that changes nothing (the same role again) records and announces nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg
import structlog

from services.catalog.access import ROLES, Role, Viewer, check_may_change_members
from services.catalog.dataset_events import program_event
from services.catalog.errors import MembershipRefused, UnknownUser
from services.catalog.storage.programs import ProgramStore
from services.catalog.storage.users import UserStore
from skyport.db import enqueue
from skyport.events import AccessChanged

log = structlog.get_logger("skyport.catalog.membership")


__all__ = ["MembershipChange", "MembershipRefused", "grant", "revoke"]


@dataclass(frozen=True)
class MembershipChange:
    mission: str
    propid: str
    username: str
    role: Role | None
    change: Literal["granted", "revoked"]
    changed_by: str | None


async def grant(
    conn: asyncpg.Connection,
    actor: Viewer | None,
    mission: str,
    propid: str,
    username: str,
    role: Role = "collaborator",
) -> MembershipChange | None:
    """Make ``username`` a member of the program with ``role`` (or change their role); None if it already was."""
    if role not in ROLES:
        raise MembershipRefused(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    mission = mission.upper()
    programs = ProgramStore(conn)
    await check_may_change_members(conn, actor, mission, propid, touching_pi=role == "pi")
    user = await UserStore(conn).by_username(username)
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    current = await programs.role_of(mission, propid, user.user_id)
    if current == role:
        return None
    if current == "pi":
        await check_may_change_members(conn, actor, mission, propid, touching_pi=True)
    if role == "pi":
        pi = await programs.pi_of(mission, propid)
        if pi is not None and pi != username:
            raise MembershipRefused(f"{mission}/{propid} already has a PI, {pi}: remove them first")
    try:
        await programs.set_member(mission, propid, user.user_id, role, None if actor is None else actor.user_id)
    except asyncpg.UniqueViolationError:  # another PI named concurrently
        raise MembershipRefused(f"{mission}/{propid} already has a PI") from None
    return await _announce(conn, MembershipChange(mission, propid, username, role, "granted", _name(actor)))


async def revoke(
    conn: asyncpg.Connection, actor: Viewer | None, mission: str, propid: str, username: str
) -> MembershipChange | None:
    """Remove ``username`` from the program; they lose access to its proprietary data at the commit.

    None if they were not a member.
    """
    mission = mission.upper()
    programs = ProgramStore(conn)
    await check_may_change_members(conn, actor, mission, propid, touching_pi=False)
    user = await UserStore(conn).by_username(username)
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    if await programs.role_of(mission, propid, user.user_id) == "pi":
        await check_may_change_members(conn, actor, mission, propid, touching_pi=True)
    if await programs.remove_member(mission, propid, user.user_id) is None:
        return None
    return await _announce(conn, MembershipChange(mission, propid, username, None, "revoked", _name(actor)))


def _name(actor: Viewer | None) -> str | None:
    return None if actor is None else actor.username


async def _announce(conn: asyncpg.Connection, change: MembershipChange) -> MembershipChange:
    await ProgramStore(conn).record_change(
        change.mission, change.propid, change.username, change.role, change.change, change.changed_by
    )
    event = program_event(
        AccessChanged(
            mission=change.mission,
            propid=change.propid,
            username=change.username,
            role=change.role,
            change=change.change,
            changed_by=change.changed_by,
        )
    )
    await enqueue(conn, event)
    log.info(
        "membership changed",
        mission=change.mission,
        propid=change.propid,
        username=change.username,
        role=change.role,
        change=change.change,
        by=change.changed_by,
    )
    return change
