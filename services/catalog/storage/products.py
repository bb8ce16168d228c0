"""The products and product_versions tables, written by cataloguing and releases, and the catalog order.

Store classes take a connection inside the caller's transaction and never commit. What a viewer reads of
these tables (search, product pages, files) is in :mod:`services.catalog.storage.search`.

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg


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
