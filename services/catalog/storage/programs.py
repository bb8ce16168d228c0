"""The programs, program_members and membership_changes tables: programs, who belongs to them, and the history.

Store classes take a connection inside the caller's transaction and never commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Program:
    mission: str
    propid: str
    title: str | None
    exclusive_access_months: int | None
    created_at: datetime
    first_data_at: datetime | None


@dataclass(frozen=True)
class ProgramSummary:
    program: Program
    pi: str | None
    members: int
    products: int


@dataclass(frozen=True)
class Member:
    username: str
    role: str
    granted_by: str | None
    granted_at: datetime


@dataclass(frozen=True)
class Membership:
    """A program a user belongs to, and as what."""

    mission: str
    propid: str
    title: str | None
    role: str | None
    """None for an administrator's view of a program they are not a member of."""


_PROGRAM_COLUMNS = "mission, propid, title, exclusive_access_months, created_at, first_data_at"


class ProgramStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(
        self, mission: str, propid: str, *, title: str | None = None, exclusive_access_months: int | None = None
    ) -> Program:
        """Create a program, or set the title and exclusive-access period of the existing one (when given)."""
        row = await self.conn.fetchrow(
            "INSERT INTO programs (mission, propid, title, exclusive_access_months) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (mission, propid) DO UPDATE SET title = coalesce(EXCLUDED.title, programs.title), "
            "exclusive_access_months = coalesce(EXCLUDED.exclusive_access_months, programs.exclusive_access_months) "
            f"RETURNING {_PROGRAM_COLUMNS}",
            mission,
            propid,
            title,
            exclusive_access_months,
        )
        return Program(**dict(row))

    async def ensure(self, programs: Collection[tuple[str, str]]) -> dict[tuple[str, str], Program]:
        """The programs (``(mission, propid)`` pairs), those the catalog did not know created (no title, no PI, no
        period of their own); one round trip when they all exist.

        Missing programs are inserted in sorted order, so two transactions creating the same ones wait for each
        other instead of deadlocking.
        """
        wanted = sorted(set(programs))
        found = await self._programs(wanted)
        missing = [key for key in wanted if key not in found]
        if missing:
            await self.conn.execute(
                "INSERT INTO programs (mission, propid) SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1, 2 "
                "ON CONFLICT DO NOTHING",
                [mission for mission, _ in missing],
                [propid for _, propid in missing],
            )
            found.update(await self._programs(missing))
        return found

    async def _programs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Program]:
        rows = await self.conn.fetch(
            f"SELECT {_PROGRAM_COLUMNS} FROM programs WHERE (mission, propid) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [mission for mission, _ in keys],
            [propid for _, propid in keys],
        )
        return {(row["mission"], row["propid"]): Program(**dict(row)) for row in rows}

    async def get(self, mission: str, propid: str) -> Program | None:
        row = await self.conn.fetchrow(
            f"SELECT {_PROGRAM_COLUMNS} FROM programs WHERE mission = $1 AND propid = $2", mission, propid
        )
        return None if row is None else Program(**dict(row))

    async def claim_first_data(self, programs: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of the programs whose first data this transaction catalogues: each program is claimed once, ever.

        The rows are locked in sorted order (no deadlock between two transactions claiming the same programs); a
        concurrent second claim waits for the first, then finds ``first_data_at`` set and leaves the program out.
        ``FOR NO KEY UPDATE`` leaves the foreign-key checks of products being inserted meanwhile free to go on.
        """
        wanted = sorted(set(programs))
        rows = await self.conn.fetch(
            "WITH claimed AS (SELECT mission, propid FROM programs "
            "WHERE (mission, propid) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND first_data_at IS NULL "
            "ORDER BY mission, propid FOR NO KEY UPDATE) "
            "UPDATE programs p SET first_data_at = now() FROM claimed c "
            "WHERE p.mission = c.mission AND p.propid = c.propid RETURNING p.mission, p.propid",
            [mission for mission, _ in wanted],
            [propid for _, propid in wanted],
        )
        return {(row["mission"], row["propid"]) for row in rows}

    async def summaries(self) -> list[ProgramSummary]:
        rows = await self.conn.fetch(
            f"SELECT {', '.join(f'p.{c}' for c in _PROGRAM_COLUMNS.split(', '))}, "
            "(SELECT u.username FROM program_members m JOIN users u USING (user_id) "
            " WHERE m.mission = p.mission AND m.propid = p.propid AND m.role = 'pi') AS pi, "
            "(SELECT count(*) FROM program_members m WHERE m.mission = p.mission AND m.propid = p.propid) AS members, "
            "(SELECT count(*) FROM products x WHERE x.mission = p.mission AND x.propid = p.propid) AS products "
            "FROM programs p ORDER BY p.mission, p.propid"
        )
        return [
            ProgramSummary(
                Program(**{k: row[k] for k in _PROGRAM_COLUMNS.split(", ")}), row["pi"], row["members"], row["products"]
            )
            for row in rows
        ]

    async def members(self, mission: str, propid: str) -> list[Member]:
        rows = await self.conn.fetch(
            "SELECT u.username, m.role, g.username AS granted_by, m.granted_at FROM program_members m "
            "JOIN users u ON u.user_id = m.user_id LEFT JOIN users g ON g.user_id = m.granted_by "
            "WHERE m.mission = $1 AND m.propid = $2 "
            "ORDER BY array_position(ARRAY['pi', 'coi', 'collaborator'], m.role), u.username",
            mission,
            propid,
        )
        return [Member(**dict(row)) for row in rows]

    async def role_of(self, mission: str, propid: str, user_id: int) -> str | None:
        role: str | None = await self.conn.fetchval(
            "SELECT role FROM program_members WHERE mission = $1 AND propid = $2 AND user_id = $3",
            mission,
            propid,
            user_id,
        )
        return role

    async def pi_of(self, mission: str, propid: str) -> str | None:
        username: str | None = await self.conn.fetchval(
            "SELECT u.username FROM program_members m JOIN users u USING (user_id) "
            "WHERE m.mission = $1 AND m.propid = $2 AND m.role = 'pi'",
            mission,
            propid,
        )
        return username

    async def memberships_of(self, user_id: int) -> list[Membership]:
        rows = await self.conn.fetch(
            "SELECT m.mission, m.propid, p.title, m.role FROM program_members m "
            "JOIN programs p USING (mission, propid) WHERE m.user_id = $1 ORDER BY m.mission, m.propid",
            user_id,
        )
        return [Membership(**dict(row)) for row in rows]

    async def all_as_admin(self, user_id: int) -> list[Membership]:
        rows = await self.conn.fetch(
            "SELECT p.mission, p.propid, p.title, m.role FROM programs p "
            "LEFT JOIN program_members m ON m.mission = p.mission AND m.propid = p.propid AND m.user_id = $1 "
            "ORDER BY p.mission, p.propid",
            user_id,
        )
        return [Membership(**dict(row)) for row in rows]

    async def set_member(self, mission: str, propid: str, user_id: int, role: str, granted_by: int | None) -> None:
        await self.conn.execute(
            "INSERT INTO program_members (mission, propid, user_id, role, granted_by) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (mission, propid, user_id) DO UPDATE SET role = EXCLUDED.role, "
            "granted_by = EXCLUDED.granted_by, granted_at = now()",
            mission,
            propid,
            user_id,
            role,
            granted_by,
        )

    async def remove_member(self, mission: str, propid: str, user_id: int) -> str | None:
        """Remove a membership; returns the role it had, or None if there was none."""
        role: str | None = await self.conn.fetchval(
            "DELETE FROM program_members WHERE mission = $1 AND propid = $2 AND user_id = $3 RETURNING role",
            mission,
            propid,
            user_id,
        )
        return role

    async def record_change(
        self, mission: str, propid: str, username: str, role: str | None, change: str, changed_by: str | None
    ) -> None:
        await self.conn.execute(
            "INSERT INTO membership_changes (mission, propid, username, role, change, changed_by) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            mission,
            propid,
            username,
            role,
            change,
            changed_by,
        )
