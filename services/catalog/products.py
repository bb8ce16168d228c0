"""Products as a viewer finds them: search pages in catalog order, product pages, files to download, scripts.

Each function takes the viewer and a connection (the caller's transaction: a read-only snapshot, so that a page
and its count see the same moment) and answers with the catalog's own objects or a refusal of
:mod:`services.catalog.errors`. What a viewer may see is decided by :mod:`services.catalog.access`, whose
condition is in every query of :mod:`services.catalog.storage.search`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

import asyncpg
import structlog

from services.catalog.access import (
    Viewer,
    check_may_ask_for_others,
    check_may_follow_catalog,
    programs_visible_to,
    viewer_named,
)
from services.catalog.bulk import ScriptFile, render_script
from services.catalog.errors import NoSuchVersion, ProductNotFound, StoredFileUnreadable, StoredFileUnusable
from services.catalog.storage.products import ProductVersion
from services.catalog.storage.search import FoundProduct, ProductFilter, ProductQueries
from skyport.cursor import encode_cursor

SCRIPT_NAME = "skyport-download.sh"

log = structlog.get_logger("skyport.catalog.products")


@dataclass(frozen=True)
class SearchPage:
    """One page of a search: the products after the cursor, whether more follow, and the count when asked."""

    products: list[FoundProduct]
    more: bool
    after_seq: int
    total: int | None = None

    @property
    def next_seq(self) -> int:
        """Where the next page starts (the same place when this one is empty: new products come after it)."""
        return self.products[-1].seq if self.products else self.after_seq


@dataclass(frozen=True)
class ProductPage:
    product: FoundProduct
    versions: list[ProductVersion]
    """Oldest first."""


@dataclass(frozen=True)
class Download:
    """A version of a visible product, to be served from archive storage."""

    archive_id: str
    public: bool
    access_format: str
    stored: ProductVersion


async def search(
    conn: asyncpg.Connection,
    viewer: Viewer,
    product_filter: ProductFilter,
    *,
    after_seq: int,
    limit: int,
    count: bool = False,
) -> SearchPage:
    """The visible products matching the filter after ``after_seq``, at most ``limit``; with ``count``, how many
    match in all."""
    queries = ProductQueries(conn)
    # One more than the page, to know whether another page follows.
    found = await queries.search(viewer, product_filter, after_seq=after_seq, limit=limit + 1)
    total = await queries.count(viewer, product_filter) if count else None
    return SearchPage(found[:limit], more=len(found) > limit, after_seq=after_seq, total=total)


async def product_page(conn: asyncpg.Connection, viewer: Viewer, archive_id: str) -> ProductPage:
    """The product with every version; :class:`ProductNotFound` when it does not exist or the viewer may not
    see it."""
    queries = ProductQueries(conn)
    found = await queries.product(viewer, archive_id)
    if found is None:
        raise ProductNotFound(archive_id, anonymous=viewer.is_anonymous)
    return ProductPage(found, await queries.versions(viewer, archive_id))


async def download(conn: asyncpg.Connection, viewer: Viewer, archive_id: str, version: int | None) -> Download:
    """The version (None: the current one) to serve; :class:`ProductNotFound` as for its page,
    :class:`NoSuchVersion` for a visible product without that version."""
    found = await ProductQueries(conn).product_file(viewer, archive_id, version)
    if found is None:
        raise ProductNotFound(archive_id, anonymous=viewer.is_anonymous)
    if found.version is None:
        raise NoSuchVersion(archive_id, version, found.current_version)
    return Download(archive_id, found.public, found.access_format, found.version)


async def stored_file(storage_dir: Path, stored: ProductVersion) -> Path:
    """The version's file in archive storage, checked against the catalog before a byte is sent.

    Called outside any transaction: a slow or unreachable storage must not hold a database connection.
    """
    relative = PurePosixPath(stored.storage_path)
    if relative.is_absolute() or any(part in ("", ".", "..") for part in relative.parts):
        log.error("unsafe storage path in the catalog", archive_id=stored.archive_id, path=stored.storage_path)
        raise StoredFileUnusable(f"{stored.archive_id} version {stored.version} has no usable storage location")
    path = storage_dir / relative
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except OSError as exc:
        log.error("stored file unreadable", archive_id=stored.archive_id, path=str(path), error=str(exc))
        raise StoredFileUnreadable(
            f"{stored.archive_id} version {stored.version} is not readable in archive storage right now"
        ) from None
    if size != stored.size_bytes:
        log.error(
            "stored file differs from the catalog",
            archive_id=stored.archive_id,
            version=stored.version,
            size=size,
            catalogued_size=stored.size_bytes,
        )
        raise StoredFileUnusable(f"{stored.archive_id} version {stored.version} in storage does not match the catalog")
    return path


async def download_script(
    conn: asyncpg.Connection,
    viewer: Viewer,
    product_filter: ProductFilter,
    *,
    after_seq: int,
    limit: int,
    link_base: str,
    query: Sequence[tuple[str, str]],
    query_string: str,
) -> str:
    """A shell script that downloads the visible products of a search (at most ``limit``, see
    :mod:`services.catalog.bulk`); when more match, it ends by fetching the script for the rest.

    ``query`` is the search as asked (its parameters, in order), for the next script's address and the comment.
    """
    page = await search(conn, viewer, product_filter, after_seq=after_seq, limit=limit)
    next_url = None
    if page.more:
        rest = [(k, v) for k, v in query if k != "cursor"]
        rest.append(("cursor", encode_cursor(page.next_seq)))
        next_url = f"{link_base}/v1/products/download-script?{urlencode(rest)}"
    return render_script(
        (ScriptFile(p.archive_id, p.version, p.original_filename, p.sha256, p.size_bytes) for p in page.products),
        public_url=link_base,
        search=query_string,
        who=viewer.username or "an anonymous caller (public data only)",
        generated=datetime.now(UTC),
        script_name=SCRIPT_NAME,
        next_script_url=next_url,
    )


async def newest_position(conn: asyncpg.Connection, viewer: Viewer) -> int:
    """The newest position in the catalog order, where a reader of every change starts (administrators)."""
    check_may_follow_catalog(viewer)
    return await ProductQueries(conn).newest_seq()


@dataclass(frozen=True)
class Visible:
    """What one user may see now, of what was asked: a service's question on someone's behalf."""

    username: str
    known: bool
    """False when the catalog has no such user (who then sees nothing, not even public data)."""
    archive_ids: list[str]
    programs: list[tuple[str, str]]
    """The programs asked about whose proprietary data the user sees (a member, or an administrator)."""


async def visible_to(
    conn: asyncpg.Connection,
    caller: Viewer,
    username: str,
    archive_ids: Sequence[str],
    programs: Sequence[tuple[str, str]] = (),
) -> Visible:
    """Which of ``archive_ids`` (one query) and of ``programs`` the user ``username`` may see now, as the access
    rule decides for that user at this moment (a revoked collaborator sees nothing more from the revoking commit).

    Only an administrator asks (the notifier, deciding who is told what when a notice is sent). An unknown user
    is answered with nothing: a notice is never sent on behalf of someone the catalog does not know.
    """
    check_may_ask_for_others(caller)
    viewer = await viewer_named(conn, username)
    if viewer is None:
        return Visible(username.lower(), False, [], [])
    ids = await ProductQueries(conn).visible_ids(viewer, sorted(set(archive_ids)))
    asked = {(mission.upper(), propid) for mission, propid in programs}
    seen = sorted(asked & {(m.mission, m.propid) for m in await programs_visible_to(conn, viewer)}) if asked else []
    return Visible(viewer.username or username.lower(), True, ids, seen)
