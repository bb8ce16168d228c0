"""The catalog's tables: users and tokens, programs and members, products and their versions.

Store classes take a connection inside the caller's transaction and never commit.

The catalog order (``products.seq``)
------------------------------------
Readers page through products with a cursor on ``seq`` (``WHERE seq > $cursor ORDER BY seq``), and the gateway
replays "everything since" in the same order. That only works if a row can never appear *behind* a cursor a
reader has already passed, that is if ``seq`` order is commit order. A plain ``nextval()`` is not: transaction
A takes 10, B takes 11 and commits first, a reader sees 11 and moves its cursor past 10, then A commits and
10 is never read.

So every change to a products row takes its ``seq`` under a transaction-level advisory lock
(:meth:`ProductStore.lock_catalog_order`), as the last thing before its commit. The lock is held until the
commit, and PostgreSQL releases a transaction's locks only after its commit is visible to others: the next
transaction can take a number only once every smaller number is visible. Numbers may have gaps (rolled back
transactions), never late arrivals.

To keep the lock short and free of deadlocks, a transaction takes it **before it writes any products row**
and writes products rows only after taking it: nobody then waits for the lock while holding a products row
that the lock's holder needs. Cataloguing writes versions and outbox rows first and the products rows last (a
batch of files takes the lock once, for all of its rows); releases take the lock first and then update their
products.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from services.catalog.sky import Cone
from skyport.http import hash_token

_ALIAS = re.compile(r"^[a-z_][a-z0-9_]*$")


class Params:
    """The positional parameters (``$1``, ``$2``, ...) of a query put together from fragments.

    >>> params = Params("KECK")
    >>> f"mission = $1 AND {visible_condition(viewer, params)}"   # adds $2 when the rule needs the user id
    """

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        """Append ``value``; returns its placeholder."""
        self.values.append(value)
        return f"${len(self.values)}"


def check_alias(alias: str) -> str:
    """A table alias safe to splice into SQL."""
    if not _ALIAS.match(alias):
        raise ValueError(f"{alias!r} is not a plain table alias")
    return alias


def cone_condition(cone: Cone, params: Params, alias: str = "p") -> str:
    """A SQL condition: the products row ``alias`` lies within ``cone`` (see :mod:`services.catalog.sky`).

    The cell ranges let PostgreSQL read a few stretches of the ``products_healpix`` index; the haversine
    distance (the same formula as :func:`services.catalog.sky.angular_distance`) then keeps exactly the rows
    inside the cone.
    """
    a = check_alias(alias)
    ranges = " OR ".join(
        f"({a}.healpix >= {params.add(first)} AND {a}.healpix < {params.add(end)})" for first, end in cone.ranges
    )
    ra, dec, radius = params.add(cone.ra), params.add(cone.dec), params.add(cone.radius)
    distance = (
        f"2 * asind(sqrt(least(1.0, sind(({a}.s_dec - {dec}) / 2) ^ 2 "
        f"+ cosd({a}.s_dec) * cosd({dec}) * sind(({a}.s_ra - {ra}) / 2) ^ 2)))"
    )
    return f"(({ranges}) AND {distance} <= {radius})"


# --- users and tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    email: str | None
    display_name: str | None
    is_admin: bool
    created_at: datetime


class UserStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(
        self, username: str, *, email: str | None = None, display_name: str | None = None, is_admin: bool = False
    ) -> User:
        """Create a user, or update the details given of the one with this username.

        ``is_admin`` makes an existing user an administrator; it never demotes one.
        """
        row = await self.conn.fetchrow(
            "INSERT INTO users (username, email, display_name, is_admin) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (username) DO UPDATE SET email = coalesce(EXCLUDED.email, users.email), "
            "display_name = coalesce(EXCLUDED.display_name, users.display_name), "
            "is_admin = users.is_admin OR EXCLUDED.is_admin "
            "RETURNING *",
            username,
            email,
            display_name,
            is_admin,
        )
        return User(**dict(row))

    async def by_username(self, username: str) -> User | None:
        row = await self.conn.fetchrow("SELECT * FROM users WHERE username = $1", username)
        return None if row is None else User(**dict(row))

    async def issue_token(self, user_id: int, label: str = "") -> str:
        """A new bearer token for the user; returns it (it is not stored, only its sha256 is)."""
        token = secrets.token_urlsafe(32)
        await self.conn.execute(
            "INSERT INTO api_tokens (token_sha256, user_id, label) VALUES ($1, $2, $3)",
            hash_token(token),
            user_id,
            label,
        )
        return token

    async def user_for_token(self, token: str) -> User | None:
        """The user a token belongs to, or None if it is unknown or revoked."""
        row = await self.conn.fetchrow(
            "SELECT u.* FROM api_tokens t JOIN users u USING (user_id) "
            "WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL",
            hash_token(token),
        )
        return None if row is None else User(**dict(row))

    async def revoke_token(self, token: str) -> bool:
        """Revoke one token (given in full); False if it is unknown or revoked already."""
        result: str = await self.conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_sha256 = $1 AND revoked_at IS NULL", hash_token(token)
        )
        return result.endswith(" 1")

    async def revoke_tokens_of(self, user_id: int, label: str | None = None) -> int:
        """Revoke a user's tokens (those with ``label``, or all); returns how many."""
        result: str = await self.conn.execute(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR label = $2)",
            user_id,
            label,
        )
        return int(result.split()[-1])


# --- programs and members ----------------------------------------------------------------------------


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


# --- products and versions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductDescription:
    """One version of a product as a file.archived event describes it, in the catalog's columns."""

    archive_id: str
    version: int
    mission: str
    propid: str
    obset: str | None
    level: str
    product: str | None
    intent: str
    original_filename: str
    release_date: date | None  # the file's own; the program's rule may replace it
    obs_collection: str
    obs_id: str
    dataproduct_type: str | None
    calib_level: int | None
    target_name: str | None
    s_ra: float | None
    s_dec: float | None
    healpix: int | None
    t_min: float | None
    t_max: float | None
    t_exptime: float | None
    em_min: float | None
    em_max: float | None
    instrument_name: str
    facility_name: str
    access_format: str
    access_estsize: int
    filters: tuple[str, ...]
    header: dict[str, Any]
    observed_at: datetime | None
    night: date | None  # the observing night at the mission's site (skyport.nights)
    written_at: datetime | None
    archived_at: datetime
    # the version's own facts
    sha256: str
    size_bytes: int
    storage_path: str
    software_version: str | None
    reference_files: tuple[str, ...]
    transfer_id: str | None


# The products columns a version describes (the rest are the row's own: public_since, first_archived_at, seq...),
# with the SQL type of the array each is passed in. Arrays of arrays must be rectangular in PostgreSQL, so the
# per-row lists (filters) travel as JSON text, as the header does.
_DESCRIBED = {
    "version": "int",
    "mission": "text",
    "propid": "text",
    "obset": "text",
    "level": "text",
    "product": "text",
    "intent": "text",
    "original_filename": "text",
    "obs_collection": "text",
    "obs_id": "text",
    "dataproduct_type": "text",
    "calib_level": "smallint",
    "target_name": "text",
    "s_ra": "float8",
    "s_dec": "float8",
    "healpix": "bigint",
    "t_min": "float8",
    "t_max": "float8",
    "t_exptime": "float8",
    "em_min": "float8",
    "em_max": "float8",
    "instrument_name": "text",
    "facility_name": "text",
    "access_format": "text",
    "access_estsize": "bigint",
    "filters": "text",
    "header": "text",
    "observed_at": "timestamptz",
    "night": "date",
    "written_at": "timestamptz",
    "archived_at": "timestamptz",
}


def _unnest(columns: dict[str, str]) -> str:
    """``unnest($1::type[], ...) AS t(column, ...)``: one row per product from one array per column."""
    arrays = ", ".join(f"${i}::{sql_type}[]" for i, sql_type in enumerate(columns.values(), start=1))
    return f"unnest({arrays}) AS t({', '.join(columns)})"


def _value_of(column: str) -> str:
    """The SQL value of a described column in :func:`_unnest`'s row ``t`` (JSON text back to its type)."""
    if column == "header":
        return "t.header::jsonb"
    if column == "filters":
        return "ARRAY(SELECT jsonb_array_elements_text(t.filters::jsonb))"
    return f"t.{column}"


_NEW_PRODUCT_COLUMNS = {
    "archive_id": "text",
    **_DESCRIBED,
    "release_date": "date",
    "public": "bool",
    "first_archived_at": "timestamptz",
}
_INSERT_PRODUCTS = (
    f"INSERT INTO products (archive_id, {', '.join(_DESCRIBED)}, release_date, public_since, first_archived_at, "
    "catalogued_at, seq) SELECT t.archive_id, "
    + ", ".join(_value_of(c) for c in _DESCRIBED)
    + ", t.release_date, CASE WHEN t.public THEN now() END, t.first_archived_at, now(), nextval('product_change_seq') "
    f"FROM {_unnest(_NEW_PRODUCT_COLUMNS)}"
)
# A new version: the release date of data not yet public follows the newest version; data once public stay so.
_UPDATE_PRODUCTS = (
    "UPDATE products p SET "
    + ", ".join(f"{c} = {_value_of(c)}" for c in _DESCRIBED)
    + ", release_date = CASE WHEN p.public_since IS NULL THEN t.release_date ELSE p.release_date END, "
    "catalogued_at = now(), seq = nextval('product_change_seq') "
    f"FROM {_unnest({'archive_id': 'text', **_DESCRIBED, 'release_date': 'date'})} WHERE p.archive_id = t.archive_id"
)
_VERSION_COLUMNS = {
    "archive_id": "text",
    "version": "int",
    "sha256": "text",
    "size_bytes": "bigint",
    "storage_path": "text",
    "original_filename": "text",
    "software_version": "text",
    "reference_files": "text",
    "supersedes_version": "int",
    "transfer_id": "text",
    "archived_at": "timestamptz",
}
_INSERT_VERSIONS = (
    f"INSERT INTO product_versions ({', '.join(_VERSION_COLUMNS)}) SELECT "
    + ", ".join(
        "ARRAY(SELECT jsonb_array_elements_text(t.reference_files::jsonb))" if c == "reference_files" else f"t.{c}"
        for c in _VERSION_COLUMNS
    )
    + f" FROM {_unnest(_VERSION_COLUMNS)}"
)

# The same version, other content (the version it supersedes stays): see services/catalog/cataloguing.py.
_REPLACE_VERSIONS = (
    "UPDATE product_versions v SET "
    + ", ".join(
        f"{c} = ARRAY(SELECT jsonb_array_elements_text(t.reference_files::jsonb))"
        if c == "reference_files"
        else f"{c} = t.{c}"
        for c in _VERSION_COLUMNS
        if c not in ("archive_id", "version", "supersedes_version")
    )
    + f", catalogued_at = now() FROM {_unnest(_VERSION_COLUMNS)} "
    "WHERE v.archive_id = t.archive_id AND v.version = t.version"
)


def _described_arrays(products: Sequence[ProductDescription]) -> list[list[Any]]:
    """One array per described column, in :data:`_DESCRIBED`'s order."""
    arrays: list[list[Any]] = []
    for column in _DESCRIBED:
        if column == "header":
            arrays.append([json.dumps(p.header) for p in products])
        elif column == "filters":
            arrays.append([json.dumps(p.filters) for p in products])
        else:
            arrays.append([getattr(p, column) for p in products])
    return arrays


@dataclass(frozen=True)
class NewProduct:
    """The products row of an archive ID catalogued for the first time (perhaps with later versions at once)."""

    current: ProductDescription
    """The version the row describes (the newest), with the release date the row gets."""
    public: bool
    first_archived_at: datetime


@dataclass(frozen=True)
class KnownVersions:
    """What the catalog holds of some archive IDs, for cataloguing some versions of them."""

    current_version: dict[str, int]
    """Each archive ID's current version; archive IDs never catalogued are absent."""
    sha256: dict[tuple[str, int], str]
    """The checksum of each ``(archive ID, version)`` asked about that is catalogued already."""
    archived_at: dict[tuple[str, int], datetime] = field(default_factory=dict)
    """When the archive stored the content catalogued for each of those (a replacement is newer)."""


@dataclass(frozen=True)
class CurrentProduct:
    archive_id: str
    version: int
    mission: str
    propid: str
    public_since: datetime | None


@dataclass(frozen=True)
class ProductVersion:
    archive_id: str
    version: int
    sha256: str
    size_bytes: int
    storage_path: str
    original_filename: str
    software_version: str | None
    reference_files: list[str]
    supersedes_version: int | None
    transfer_id: str | None
    archived_at: datetime
    catalogued_at: datetime


@dataclass(frozen=True)
class AnnouncedFile:
    """A product's current version as a dataset event lists it."""

    archive_id: str
    version: int
    mission: str
    propid: str
    level: str
    obset: str | None
    original_filename: str
    sha256: str
    size_bytes: int


_ANNOUNCED = (
    "SELECT p.archive_id, p.version, p.mission, p.propid, p.level, p.obset, v.original_filename, v.sha256, "
    "v.size_bytes FROM products p JOIN product_versions v ON v.archive_id = p.archive_id AND v.version = p.version "
)


class ProductStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_archive_ids(self, archive_ids: Collection[str]) -> None:
        """Serialise the cataloguing of these archive IDs until the transaction ends (versions arrive in order).

        The locks are taken in the order of their keys (PostgreSQL evaluates a volatile output column after the
        ORDER BY), so that two transactions locking overlapping sets wait for each other instead of deadlocking.
        """
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(key) FROM (SELECT DISTINCT hashtext('skyport.catalog.product.' || id) AS key "
            "FROM unnest($1::text[]) AS id) AS keys ORDER BY key",
            list(set(archive_ids)),
        )

    async def lock_catalog_order(self) -> None:
        """Take the catalog-order lock until the transaction ends; see the module's documentation.

        Call it before writing any products row, and write products rows only after it.
        """
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('skyport.catalog.order.' || current_schema()))")

    async def known_versions(self, versions: Collection[tuple[str, int]]) -> KnownVersions:
        """What the catalog holds of these ``(archive ID, version)`` pairs, for cataloguing them (one round trip)."""
        rows = await self.conn.fetch(
            "SELECT t.archive_id, t.version, p.version AS current_version, v.sha256, v.archived_at "
            "FROM unnest($1::text[], $2::int[]) AS t(archive_id, version) "
            "LEFT JOIN products p ON p.archive_id = t.archive_id "
            "LEFT JOIN product_versions v ON v.archive_id = t.archive_id AND v.version = t.version",
            [archive_id for archive_id, _ in versions],
            [version for _, version in versions],
        )
        return KnownVersions(
            current_version={r["archive_id"]: r["current_version"] for r in rows if r["current_version"] is not None},
            sha256={(r["archive_id"], r["version"]): r["sha256"] for r in rows if r["sha256"] is not None},
            archived_at={(r["archive_id"], r["version"]): r["archived_at"] for r in rows if r["sha256"] is not None},
        )

    async def current(self, archive_id: str) -> CurrentProduct | None:
        row = await self.conn.fetchrow(
            "SELECT archive_id, version, mission, propid, public_since FROM products WHERE archive_id = $1", archive_id
        )
        return None if row is None else CurrentProduct(**dict(row))

    async def version(self, archive_id: str, version: int) -> ProductVersion | None:
        row = await self.conn.fetchrow(
            "SELECT * FROM product_versions WHERE archive_id = $1 AND version = $2", archive_id, version
        )
        return None if row is None else ProductVersion(**dict(row))

    async def versions(self, archive_id: str) -> list[ProductVersion]:
        """Every version of a product, oldest first (no access check: see services.catalog.access)."""
        rows = await self.conn.fetch(
            "SELECT * FROM product_versions WHERE archive_id = $1 ORDER BY version", archive_id
        )
        return [ProductVersion(**dict(row)) for row in rows]

    async def add_versions(self, versions: Sequence[tuple[ProductDescription, int | None]]) -> None:
        """Record versions (each with the version it supersedes, if it does) in one round trip."""
        if not versions:
            return
        await self.conn.execute(
            _INSERT_VERSIONS,
            [p.archive_id for p, _ in versions],
            [p.version for p, _ in versions],
            [p.sha256 for p, _ in versions],
            [p.size_bytes for p, _ in versions],
            [p.storage_path for p, _ in versions],
            [p.original_filename for p, _ in versions],
            [p.software_version for p, _ in versions],
            [json.dumps(p.reference_files) for p, _ in versions],
            [supersedes for _, supersedes in versions],
            [p.transfer_id for p, _ in versions],
            [p.archived_at for p, _ in versions],
        )

    async def replace_versions(self, versions: Sequence[ProductDescription]) -> None:
        """A complete file's content replaces the partial content catalogued for the same version (one round trip)."""
        if not versions:
            return
        await self.conn.execute(
            _REPLACE_VERSIONS,
            [p.archive_id for p in versions],
            [p.version for p in versions],
            [p.sha256 for p in versions],
            [p.size_bytes for p in versions],
            [p.storage_path for p in versions],
            [p.original_filename for p in versions],
            [p.software_version for p in versions],
            [json.dumps(p.reference_files) for p in versions],
            [None for _ in versions],
            [p.transfer_id for p in versions],
            [p.archived_at for p in versions],
        )

    async def insert(self, products: Sequence[NewProduct]) -> None:
        """The products rows of new archive IDs; call :meth:`lock_catalog_order` first."""
        if not products:
            return
        await self.conn.execute(
            _INSERT_PRODUCTS,
            [p.current.archive_id for p in products],
            *_described_arrays([p.current for p in products]),
            [p.current.release_date for p in products],
            [p.public for p in products],
            [p.first_archived_at for p in products],
        )

    async def update_to(self, products: Sequence[ProductDescription]) -> None:
        """Make these (newer) versions the current ones, one per archive ID; call :meth:`lock_catalog_order` first."""
        if not products:
            return
        await self.conn.execute(
            _UPDATE_PRODUCTS,
            [p.archive_id for p in products],
            *_described_arrays(products),
            [p.release_date for p in products],
        )

    async def due_for_release(self, today: date, limit: int) -> list[AnnouncedFile]:
        """Proprietary products whose release date is ``today`` or earlier, grouped by program and level."""
        rows = await self.conn.fetch(
            _ANNOUNCED + "WHERE p.public_since IS NULL AND p.release_date <= $1 "
            "ORDER BY p.mission, p.propid, p.level, p.archive_id LIMIT $2",
            today,
            limit,
        )
        return [AnnouncedFile(**dict(row)) for row in rows]

    async def proprietary_of(
        self, mission: str, propid: str, archive_ids: Sequence[str] | None = None
    ) -> list[AnnouncedFile]:
        """A program's products that are not public yet (all, or those among ``archive_ids``)."""
        rows = await self.conn.fetch(
            _ANNOUNCED + "WHERE p.mission = $1 AND p.propid = $2 AND p.public_since IS NULL "
            "AND ($3::text[] IS NULL OR p.archive_id = ANY($3::text[])) ORDER BY p.level, p.archive_id",
            mission,
            propid,
            None if archive_ids is None else list(archive_ids),
        )
        return [AnnouncedFile(**dict(row)) for row in rows]

    async def make_public(self, archive_ids: Sequence[str], *, early: bool) -> list[str]:
        """Make products public now; returns those that were not already. Call :meth:`lock_catalog_order` first."""
        rows = await self.conn.fetch(
            "UPDATE products SET public_since = now(), released_early = $2, catalogued_at = now(), "
            "seq = nextval('product_change_seq') WHERE archive_id = ANY($1::text[]) AND public_since IS NULL "
            "RETURNING archive_id",
            list(archive_ids),
            early,
        )
        return [row["archive_id"] for row in rows]
