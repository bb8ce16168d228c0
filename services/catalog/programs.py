"""Programs: a program's members as its members see them, and the administration of programs (create, list).

Membership changes are in :mod:`services.catalog.membership`, early release in :mod:`services.catalog.releases`;
who may do what is decided by :mod:`services.catalog.access`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.catalog.access import ProgramRights, Viewer, check_may_see_members, rights_in
from services.catalog.membership import grant
from services.catalog.storage.programs import Member, Program, ProgramStore, ProgramSummary


@dataclass(frozen=True)
class ProgramMembers:
    program: Program
    members: list[Member]
    """The PI first, then co-investigators and collaborators, by username."""
    rights: ProgramRights
    """What the viewer may do in the program (the page shows only the doors that open)."""


async def members(conn: asyncpg.Connection, viewer: Viewer, mission: str, propid: str) -> ProgramMembers:
    """The program's members, and what the viewer may do with them, for one of them or an administrator;
    :class:`UnknownProgram` for anyone else."""
    await check_may_see_members(conn, viewer, mission, propid)
    programs = ProgramStore(conn)
    program = await programs.get(mission, propid)
    assert program is not None  # the check found it, in this transaction
    return ProgramMembers(
        program, await programs.members(mission, propid), await rights_in(conn, viewer, mission, propid)
    )


async def add_program(
    conn: asyncpg.Connection,
    mission: str,
    propid: str,
    *,
    title: str | None = None,
    exclusive_access_months: int | None = None,
    pi: str | None = None,
) -> Program:
    """Create a program (or update its title and period) and, with ``pi``, name its PI (an administration
    command: announced like any grant)."""
    program = await ProgramStore(conn).add(
        mission, propid, title=title, exclusive_access_months=exclusive_access_months
    )
    if pi is not None:
        await grant(conn, None, mission, propid, pi, "pi")
    return program


async def summaries(conn: asyncpg.Connection) -> list[ProgramSummary]:
    """Every program with its PI and its counts of members and products (administration)."""
    return await ProgramStore(conn).summaries()
