"""Products as one viewer may read them: search in catalog order, counts, product pages, versions and files.

Every query on ``products`` includes :func:`services.catalog.access.visible_condition`, so that the access rule
stays in one place (the access module writes the condition, this module only places it): a product the viewer
may not see is never returned, counted or served, and is reported exactly like one that does not exist
(``None``). Store classes take a connection and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

import asyncpg

from services.catalog.access import Viewer, visible_condition
from services.catalog.sky import Cone
from services.catalog.storage.products import ProductVersion
from services.catalog.storage.sql import Params, check_alias, cone_condition, escape_like, glob_to_like


@dataclass(frozen=True)
class Tonight:
    """``night=tonight``: the night in progress at each product's own site (skyport.nights), when it was asked."""

    by_mission: tuple[tuple[str, date], ...]
    """Each configured mission's tonight."""
    default: date
    """Tonight for the missions without a rule of their own."""


@dataclass(frozen=True)
class ProductFilter:
    """What a search asks for; empty tuples and None ask for nothing. Values within a field are alternatives."""

    missions: tuple[str, ...] = ()
    propids: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    """Compared case-insensitively."""
    levels: tuple[str, ...] = ()
    intents: tuple[str, ...] = ()
    t_min: float | None = None
    """MJD: products whose observation ends at or after this (the observation interval overlaps the range)."""
    t_max: float | None = None
    """MJD: products whose observation starts at or before this."""
    night: date | Tonight | None = None
    """Products observed in this observing night of their mission's site (skyport.nights), or in tonight's."""
    archived_since: datetime | None = None
    """Products whose current version was archived at or after this."""
    filename_glob: str | None = None
    """On the original file name, case-insensitively: ``*`` and ``?`` are the only wildcards."""
    target: str | None = None
    """A case-insensitive substring of the target name."""
    cone: Cone | None = None


def filter_condition(product_filter: ProductFilter, params: Params, alias: str = "p") -> str:
    """The filter as a SQL condition on the ``products`` row ``alias`` (``true`` when it asks for nothing)."""
    a = check_alias(alias)
    f = product_filter
    conditions = []
    if f.missions:
        conditions.append(f"{a}.mission = ANY({params.add(list(f.missions))}::text[])")
    if f.propids:
        conditions.append(f"{a}.propid = ANY({params.add(list(f.propids))}::text[])")
    if f.instruments:
        upper = [i.upper() for i in f.instruments]
        conditions.append(f"upper({a}.instrument_name) = ANY({params.add(upper)}::text[])")
    if f.levels:
        conditions.append(f"{a}.level = ANY({params.add(list(f.levels))}::text[])")
    if f.intents:
        conditions.append(f"{a}.intent = ANY({params.add(list(f.intents))}::text[])")
    if f.t_min is not None:
        conditions.append(f"{a}.t_max >= {params.add(f.t_min)}")
    if f.t_max is not None:
        conditions.append(f"{a}.t_min <= {params.add(f.t_max)}")
    if isinstance(f.night, Tonight):
        known = [mission for mission, _ in f.night.by_mission]
        each = [f"({a}.mission = {params.add(m)} AND {a}.night = {params.add(n)})" for m, n in f.night.by_mission]
        each.append(f"({a}.mission <> ALL({params.add(known)}::text[]) AND {a}.night = {params.add(f.night.default)})")
        conditions.append(f"({' OR '.join(each)})")
    elif f.night is not None:
        conditions.append(f"{a}.night = {params.add(f.night)}")
    if f.archived_since is not None:
        conditions.append(f"{a}.archived_at >= {params.add(f.archived_since)}")
    if f.filename_glob is not None:
        conditions.append(f"{a}.original_filename ILIKE {params.add(glob_to_like(f.filename_glob))}")
    if f.target is not None:
        conditions.append(f"{a}.target_name ILIKE {params.add('%' + escape_like(f.target) + '%')}")
    if f.cone is not None:
        conditions.append(cone_condition(f.cone, params, a))
    return " AND ".join(conditions) or "true"


@dataclass(frozen=True)
class FoundProduct:
    """A product as the API shows it: its current version's description and file (never its storage path)."""

    seq: int
    archive_id: str
    version: int
    mission: str
    propid: str
    obset: str | None
    level: str
    product: str | None
    intent: str
    original_filename: str
    release_date: date
    public_since: datetime | None
    released_early: bool
    obs_collection: str
    obs_id: str
    dataproduct_type: str | None
    calib_level: int | None
    target_name: str | None
    s_ra: float | None
    s_dec: float | None
    t_min: float | None
    t_max: float | None
    t_exptime: float | None
    em_min: float | None
    em_max: float | None
    instrument_name: str
    facility_name: str
    access_format: str
    access_estsize: int
    filters: list[str]
    header: dict[str, Any]
    observed_at: datetime | None
    night: date | None
    written_at: datetime | None
    first_archived_at: datetime
    archived_at: datetime
    sha256: str
    size_bytes: int
    software_version: str | None


_FROM_VERSION = {"sha256", "size_bytes", "software_version"}


def _product_column(name: str) -> str:
    if name in _FROM_VERSION:
        return f"v.{name}"
    return "p.header::text AS header" if name == "header" else f"p.{name}"


_SELECT_PRODUCT = (
    "SELECT "
    + ", ".join(_product_column(f.name) for f in fields(FoundProduct))
    + " FROM products p JOIN product_versions v ON v.archive_id = p.archive_id AND v.version = p.version "
)


def _found(row: asyncpg.Record) -> FoundProduct:
    values = dict(row)
    values["header"] = json.loads(values["header"])
    values["filters"] = list(values["filters"])
    return FoundProduct(**values)


@dataclass(frozen=True)
class ProductFile:
    """A version of a visible product, for download."""

    archive_id: str
    current_version: int
    public: bool
    access_format: str
    version: ProductVersion | None
    """None when the product has no such version."""


class ProductQueries:
    """Products as one viewer may see them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def search(
        self, viewer: Viewer, product_filter: ProductFilter, *, after_seq: int, limit: int
    ) -> list[FoundProduct]:
        """The visible products matching the filter, in catalog order after ``after_seq`` (at most ``limit``)."""
        params = Params(after_seq)
        where = f"p.seq > $1 AND {filter_condition(product_filter, params)} AND {visible_condition(viewer, params)}"
        rows = await self.conn.fetch(
            f"{_SELECT_PRODUCT} WHERE {where} ORDER BY p.seq LIMIT {params.add(limit)}", *params.values
        )
        return [_found(row) for row in rows]

    async def newest_seq(self) -> int:
        """The newest position in the catalog order (0 for an empty catalog); every later change comes after it."""
        seq: int = await self.conn.fetchval("SELECT coalesce(max(seq), 0) FROM products")
        return seq

    async def count(self, viewer: Viewer, product_filter: ProductFilter) -> int:
        """How many visible products match the filter (all pages)."""
        params = Params()
        where = f"{filter_condition(product_filter, params)} AND {visible_condition(viewer, params)}"
        count: int = await self.conn.fetchval(f"SELECT count(*) FROM products p WHERE {where}", *params.values)
        return count

    async def visible_ids(self, viewer: Viewer, archive_ids: Sequence[str]) -> list[str]:
        """Those of ``archive_ids`` the viewer may see now, sorted (unknown ones are left out like hidden ones)."""
        params = Params(list(archive_ids))
        rows = await self.conn.fetch(
            f"SELECT p.archive_id FROM products p WHERE p.archive_id = ANY($1::text[]) "
            f"AND {visible_condition(viewer, params)} ORDER BY p.archive_id",
            *params.values,
        )
        return [row["archive_id"] for row in rows]

    async def product(self, viewer: Viewer, archive_id: str) -> FoundProduct | None:
        """The product, or None when it does not exist or the viewer may not see it."""
        params = Params(archive_id)
        row = await self.conn.fetchrow(
            f"{_SELECT_PRODUCT} WHERE p.archive_id = $1 AND {visible_condition(viewer, params)}", *params.values
        )
        return None if row is None else _found(row)

    async def versions(self, viewer: Viewer, archive_id: str) -> list[ProductVersion]:
        """Every version of the product, oldest first; empty when the viewer may not see the product."""
        params = Params(archive_id)
        rows = await self.conn.fetch(
            f"SELECT {_VERSION_FIELDS} FROM product_versions v JOIN products p ON p.archive_id = v.archive_id "
            f"WHERE v.archive_id = $1 AND {visible_condition(viewer, params)} ORDER BY v.version",
            *params.values,
        )
        return [ProductVersion(**dict(row)) for row in rows]

    async def product_file(self, viewer: Viewer, archive_id: str, version: int | None) -> ProductFile | None:
        """A version (None: the current one) of the product; None when the viewer may not see the product."""
        params = Params(archive_id, version)
        row = await self.conn.fetchrow(
            "SELECT p.version AS current_version, p.public_since IS NOT NULL AS public, p.access_format, "
            f"{_VERSION_COLUMNS} FROM products p LEFT JOIN product_versions v "
            "ON v.archive_id = p.archive_id AND v.version = coalesce($2::integer, p.version) "
            f"WHERE p.archive_id = $1 AND {visible_condition(viewer, params)}",
            *params.values,
        )
        if row is None:
            return None
        found = None
        if row["v_version"] is not None:
            found = ProductVersion(**{f.name: row[f"v_{f.name}"] for f in fields(ProductVersion)})
        return ProductFile(archive_id, row["current_version"], row["public"], row["access_format"], found)


_VERSION_FIELDS = ", ".join(f"v.{f.name}" for f in fields(ProductVersion))
_VERSION_COLUMNS = ", ".join(f"v.{f.name} AS v_{f.name}" for f in fields(ProductVersion))
