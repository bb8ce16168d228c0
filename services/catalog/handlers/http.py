"""The catalog API (``/v1``): search, product pages, downloads and download scripts, who am I, program members,
early release, API tokens. See ``services/catalog/openapi.yaml``.

Handlers only adapt HTTP: read the request (:mod:`services.catalog.handlers.params`, ``bodies``), call one
function of a service module (:mod:`services.catalog.products`, ``programs``, ``membership``, ``releases``,
``users``) in the transaction they open, and answer with a model of :mod:`skyport.api.catalog` (never a storage
row as it is, so that a new column is not published by accident); the services' refusals
(:mod:`services.catalog.errors`) become API errors in :func:`refusal`. Every decision of who may do what is
:mod:`services.catalog.access`'s, and there is no SQL here (``tests/unit/catalog/test_layers.py`` checks both).
A product the caller may not see is answered exactly like one that does not exist (404, same body), in every
door. Callers without a token are anonymous and see
public data only; a token that is sent must be valid (401 otherwise), and is checked on every request, so that a
revoked token or membership stops working at the next request.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from services.catalog import membership, products, programs, releases, users
from services.catalog.access import ANONYMOUS, Viewer, require_user, viewer_for_token
from services.catalog.dataset_events import download_url
from services.catalog.errors import (
    MembershipRefused,
    NoSuchVersion,
    NotAllowed,
    NotSignedIn,
    ProductNotFound,
    StoredFileUnreadable,
    StoredFileUnusable,
    UnknownProgram,
    UnknownUser,
)
from services.catalog.handlers.bodies import EarlyRelease, MemberGrant, TokenRequest
from services.catalog.handlers.params import BadParameter, parse_int, parse_search
from services.catalog.settings import CatalogSettings
from services.catalog.storage.products import ProductVersion
from services.catalog.storage.search import FoundProduct
from services.catalog.storage.users import TOKEN_ID_LENGTH
from skyport.api import catalog as api
from skyport.api.errors import ErrorCode
from skyport.cursor import encode_cursor
from skyport.db import Database
from skyport.http import CHALLENGE, ApiError, bearer_token, json_body, json_errors, refuse_nul
from skyport.nights import NightRule, Nights

SEARCH_DEFAULT_LIMIT = 100
SEARCH_MAX_LIMIT = 1000
SCRIPT_MAX_FILES = 10_000
_MAX_TOKEN = 256
_TOKEN_ID = re.compile(rf"^[0-9a-f]{{{TOKEN_ID_LENGTH}}}$")
_PROGRAM_WORD = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# A host as a proxy may report it (RFC 7239 host: a name or an IP address, with a port); nothing that could
# break out of a URL's authority.
_FORWARDED_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")

VIEWER = web.RequestKey("viewer", Viewer)

log = structlog.get_logger("skyport.catalog.api")


def refusal(exc: Exception) -> ApiError | None:
    """The parameters' and the access rule's refusals as the API answers them."""
    if isinstance(exc, BadParameter):
        return ApiError(400, str(exc), code=exc.code, parameter=exc.parameter)
    if isinstance(exc, NotSignedIn):
        return ApiError(401, str(exc), headers={"WWW-Authenticate": CHALLENGE})
    if isinstance(exc, NotAllowed):
        return ApiError(403, str(exc))
    if isinstance(exc, ProductNotFound):
        return ApiError(404, str(exc), code=ErrorCode.NOT_FOUND)
    if isinstance(exc, NoSuchVersion):
        return ApiError(404, str(exc), code=ErrorCode.NOT_FOUND, current_version=exc.current_version)
    if isinstance(exc, UnknownProgram | UnknownUser):
        return ApiError(404, str(exc))
    if isinstance(exc, MembershipRefused):
        return ApiError(409, str(exc))
    if isinstance(exc, StoredFileUnreadable):
        return ApiError(503, str(exc))
    if isinstance(exc, StoredFileUnusable):
        return ApiError(500, str(exc))
    return None


class CatalogApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "skyport_catalog_api_requests_total",
            "Catalog API requests by route, method and status (a file's 206/304/416 is decided as it is sent, "
            "and counted here as 200).",
            ("route", "method", "status"),
            registry=registry,
        )
        self.seconds = Histogram(
            "skyport_catalog_api_request_seconds",
            "Time to answer a catalog API request (for a download: until its bytes start).",
            ("route",),
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.downloads = Counter(
            "skyport_catalog_api_downloads_total",
            "Files and download scripts served, by kind (file, script).",
            ("kind",),
            registry=registry,
        )


class CatalogApi:
    """The handlers; one instance per process. ``app()`` builds the aiohttp application to run."""

    def __init__(
        self,
        db: Database,
        settings: CatalogSettings,
        registry: CollectorRegistry,
        *,
        script_max_files: int = SCRIPT_MAX_FILES,
        nights: Nights | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.public_url = settings.catalog_public_url
        self.nights = nights or Nights()
        self.storage_dir = settings.storage_dir
        self.metrics = CatalogApiMetrics(registry)
        self.script_max_files = script_max_files

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.measure, json_errors(refusal), refuse_nul, self.authenticate], client_max_size=1 << 20
        )
        router = app.router
        router.add_get("/v1/products", self.search)
        router.add_get("/v1/products/download-script", self.download_script)  # before {archive_id}
        router.add_get("/v1/products/{archive_id}", self.product)
        router.add_get("/v1/files/{archive_id}", self.download)
        router.add_get("/v1/me", self.me)
        router.add_get("/v1/position", self.position)
        router.add_get("/v1/nights", self.night_rules)
        router.add_get("/v1/programs/{mission}/{propid}/members", self.members)
        router.add_put("/v1/programs/{mission}/{propid}/members/{username}", self.grant_member)
        router.add_delete("/v1/programs/{mission}/{propid}/members/{username}", self.revoke_member)
        router.add_post("/v1/programs/{mission}/{propid}/release", self.release)
        router.add_post("/v1/access/visible", self.visible)
        router.add_post("/v1/tokens", self.issue_token)
        router.add_delete("/v1/tokens/{token_id}", self.revoke_token)
        return app

    # --- middlewares ----------------------------------------------------------------------------------

    @web.middleware
    async def measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.metrics.requests.labels(route, request.method, str(status)).inc()
            self.metrics.seconds.labels(route).observe(time.perf_counter() - started)

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who is asking: anonymous without an Authorization header, else the user of a valid bearer token."""
        token = bearer_token(request)
        if token is None:
            request[VIEWER] = ANONYMOUS
            return await handler(request)
        viewer = None
        if len(token) <= _MAX_TOKEN:
            async with self.db.pool.acquire() as conn:
                viewer = await viewer_for_token(conn, token)
        if viewer is None:
            log.info("request with an unknown or revoked token", peer=request.remote, path=request.path)
            raise ApiError(
                401,
                "the token is unknown or revoked: use another, or have a new one issued (POST /v1/tokens, "
                "skyport catalog issue-token)",
                headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'},
            )
        request[VIEWER] = viewer
        with structlog.contextvars.bound_contextvars(username=viewer.username):
            return await handler(request)

    # --- products ---------------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        search = parse_search(
            request.query, default_limit=SEARCH_DEFAULT_LIMIT, max_limit=SEARCH_MAX_LIMIT, nights=self.nights
        )
        async with self._snapshot() as conn:
            page = await products.search(
                conn, request[VIEWER], search.filter, after_seq=search.after_seq, limit=search.limit, count=search.count
            )
        base = self.link_base(request)
        answer = api.ProductPage(
            products=[api.Product.model_validate(_product_fields(p, base)) for p in page.products],
            next_cursor=encode_cursor(page.next_seq),
            more=page.more,
            total=page.total,
        )
        return _answer(answer, exclude={"total"} if page.total is None else None)

    async def product(self, request: web.Request) -> web.Response:
        _only(request, ())
        async with self._snapshot() as conn:
            page = await products.product_page(conn, request[VIEWER], request.match_info["archive_id"])
        base = self.link_base(request)
        current = page.product.version
        return _answer(
            api.ProductDetail.model_validate(
                {**_product_fields(page.product, base), "versions": [_version(v, current, base) for v in page.versions]}
            )
        )

    async def download(self, request: web.Request) -> web.FileResponse:
        _only(request, ("version",))
        archive_id = request.match_info["archive_id"]
        asked = request.query.get("version")
        version = None if asked is None else parse_int("version", asked, 1, 2**31 - 1)
        async with self.db.pool.acquire() as conn:
            found = await products.download(conn, request[VIEWER], archive_id, version)
        stored = found.stored
        path = await products.stored_file(self.storage_dir, stored)
        if not found.public:
            cache = "private, no-store"
        elif version is not None:
            cache = "public, max-age=86400"  # a version's bytes never change
        else:
            cache = "no-cache"  # the current version may change
        headers = {
            "Content-Type": found.access_format,
            "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(stored.sha256)).decode()}:",
            "Content-Disposition": _attachment(stored.original_filename),
            "Cache-Control": cache,
            "Skyport-Version": str(stored.version),
        }
        if request.method == "GET":  # not HEAD
            self.metrics.downloads.labels("file").inc()
            log.info(
                "file served",
                archive_id=archive_id,
                version=stored.version,
                public=found.public,
                range=request.headers.get("Range"),
            )
        # Archive storage holds one file per version folder, so FileResponse's look for a pre-compressed
        # sibling (.gz, .br) finds nothing and the bytes served are the catalogued ones.
        return _ArchivedFile(path, headers=headers)

    async def download_script(self, request: web.Request) -> web.Response:
        search = parse_search(
            request.query,
            default_limit=self.script_max_files,
            max_limit=self.script_max_files,
            countable=False,
            nights=self.nights,
        )
        async with self._snapshot() as conn:
            script = await products.download_script(
                conn,
                request[VIEWER],
                search.filter,
                after_seq=search.after_seq,
                limit=search.limit,
                link_base=self.link_base(request),
                query=list(request.query.items()),
                query_string=request.query_string,
            )
        self.metrics.downloads.labels("script").inc()
        return web.Response(
            text=script,
            content_type="text/x-shellscript",
            headers={
                "Content-Disposition": f'attachment; filename="{products.SCRIPT_NAME}"',
                "Cache-Control": "private, no-store",
            },
        )

    async def night_rules(self, request: web.Request) -> web.Response:
        """Each mission's observing night (skyport.nights) and tonight at its site; public, like the sites."""
        _only(request, ())
        now = datetime.now(UTC)

        def described(rule: NightRule) -> dict[str, object]:
            return {**rule.as_json(), "tonight": rule.tonight(now)}

        missions = [
            api.MissionNightRule.model_validate({"mission": name, **described(rule)})
            for name, rule in sorted(self.nights.rules.items())
        ]
        return _answer(
            api.NightRules(missions=missions, default=api.NightRule.model_validate(described(self.nights.default)))
        )

    async def position(self, request: web.Request) -> web.Response:
        """The newest catalog position (administrators): where a reader of every change starts (the gateway)."""
        _only(request, ())
        async with self._snapshot() as conn:
            seq = await products.newest_position(conn, request[VIEWER])
        return _answer(api.Position(cursor=encode_cursor(seq)))

    async def visible(self, request: web.Request) -> web.Response:
        """What another user may see now, of the products and programs asked (administrators: the notifier)."""
        _only(request, ())
        viewer = require_user(request[VIEWER])
        question = await json_body(request, api.VisibleQuestion)
        async with self._snapshot() as conn:
            found = await products.visible_to(
                conn,
                viewer,
                question.username,
                question.archive_ids,
                [(p.mission, p.propid) for p in question.programs],
            )
        return _answer(
            api.Visible(
                username=found.username,
                known=found.known,
                archive_ids=found.archive_ids,
                programs=[api.ProgramRef(mission=m, propid=p) for m, p in found.programs],
            )
        )

    # --- people and programs ----------------------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        async with self._snapshot() as conn:
            me = await users.me(conn, viewer)
        return _answer(
            api.Me(
                username=me.user.username,
                display_name=me.user.display_name,
                email=me.user.email,
                is_admin=me.user.is_admin,
                programs=[api.ProgramRole.model_validate(asdict(m)) for m in me.programs],
                tokens=[api.TokenInfo.model_validate(asdict(t)) for t in me.tokens],
            )
        )

    async def members(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        mission, propid = _program(request)
        async with self._snapshot() as conn:
            found = await programs.members(conn, viewer, mission, propid)
        return _answer(
            api.Members(
                mission=mission,
                propid=propid,
                title=found.program.title,
                members=[
                    api.Member.model_validate({**asdict(m), "may_remove": found.rights.may_remove(m.role)})
                    for m in found.members
                ],
                may_manage_members=found.rights.may_manage_members,
                grantable_roles=list(found.rights.grantable_roles),
                may_release_early=found.rights.may_release_early,
            )
        )

    async def grant_member(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        mission, propid = _program(request)
        username = request.match_info["username"].lower()
        role = (await json_body(request, MemberGrant)).role
        async with self.db.transaction() as conn:
            change = await membership.grant(conn, viewer, mission, propid, username, role)
        return _answer(
            api.MembershipChange(
                mission=mission, propid=propid, username=username, role=role, changed=change is not None
            )
        )

    async def revoke_member(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        mission, propid = _program(request)
        username = request.match_info["username"].lower()
        async with self.db.transaction() as conn:
            change = await membership.revoke(conn, viewer, mission, propid, username)
        if change is None:
            raise ApiError(404, f"{username} is not a member of {mission}/{propid}")
        return web.Response(status=204)

    async def release(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        mission, propid = _program(request)
        archive_ids = (await json_body(request, EarlyRelease, required=False)).archive_ids
        async with self.db.transaction() as conn:
            released = await releases.release_early(
                conn,
                viewer,
                mission,
                propid,
                archive_ids,
                public_url=self.public_url,
                max_files_per_event=self.settings.public_event_max_files,
            )
        return _answer(api.Released(mission=mission, propid=propid, released=[f.archive_id for f in released]))

    # --- tokens -----------------------------------------------------------------------------------------

    async def issue_token(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        label = (await json_body(request, TokenRequest, required=False)).label
        async with self.db.transaction() as conn:
            issued = await users.issue_own_token(conn, viewer, label)
        return _answer(
            api.IssuedToken.model_validate({"token": issued.token, **asdict(issued.info)}),
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    async def revoke_token(self, request: web.Request) -> web.Response:
        _only(request, ())
        viewer = require_user(request[VIEWER])
        token_id = request.match_info["token_id"]
        if not _TOKEN_ID.match(token_id):
            raise BadParameter(
                "token_id",
                f"a token id is {TOKEN_ID_LENGTH} hexadecimal digits (see GET /v1/me), not {token_id[:100]!r}",
            )
        async with self.db.transaction() as conn:
            revoked = await users.revoke_own_token(conn, viewer, token_id)
        if not revoked:
            raise ApiError(404, f"you have no active token {token_id}")
        return web.Response(status=204)

    # --- helpers ----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """A read-only transaction whose queries all see the same moment (a page and its count, say)."""
        async with self.db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield conn

    def link_base(self, request: web.Request) -> str:
        """The address that links in an answer start with: the catalog's public URL, or the host and scheme a
        proxy in front of the catalog says the caller used (``Forwarded: host=...;proto=...``, RFC 7239).

        The gateway forwards the catalog's API to browsers and says so, so that the download and script links a
        browser gets point at the gateway, its one address. A caller that sends the header itself only changes
        the links of its own answer.
        """
        forwarded = request.forwarded[0] if request.forwarded else {}
        host, proto = forwarded.get("host"), forwarded.get("proto", "http")
        if host is None or proto not in ("http", "https") or not _FORWARDED_HOST.fullmatch(host):
            return self.public_url
        return f"{proto}://{host}"


def _product_fields(found: FoundProduct, base: str) -> dict[str, Any]:
    """The product's values, for :class:`skyport.api.catalog.Product` to take the ones the API shows."""
    return {
        **asdict(found),
        "cursor": encode_cursor(found.seq),
        "public": found.public_since is not None,
        "access_url": download_url(base, quote(found.archive_id, safe=""), found.version),
    }


def _version(version: ProductVersion, current: int, base: str) -> api.Version:
    """A version as the API shows it (never its storage path nor the transfer that brought it)."""
    return api.Version.model_validate(
        {
            **asdict(version),
            "current": version.version == current,
            "access_url": download_url(base, quote(version.archive_id, safe=""), version.version),
        }
    )


def _answer(
    model: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None, exclude: set[str] | None = None
) -> web.Response:
    return web.Response(
        text=model.model_dump_json(exclude=exclude), status=status, headers=headers, content_type="application/json"
    )


def _program(request: web.Request) -> tuple[str, str]:
    mission, propid = request.match_info["mission"], request.match_info["propid"]
    for name, word in (("mission", mission), ("propid", propid)):
        if not _PROGRAM_WORD.match(word):
            raise BadParameter(name, f"{name} must be letters, digits, '_' and '-' (at most 64), not {word[:100]!r}")
    return mission.upper(), propid


def _only(request: web.Request, allowed: Collection[str]) -> None:
    """Refuse query parameters the endpoint does not take (a misspelt one would otherwise be ignored)."""
    for name in request.query:
        if name not in allowed:
            takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
            raise BadParameter(name, f"unknown parameter {name!r} for this endpoint: {takes}")
    for name in allowed:
        if len(request.query.getall(name, [])) > 1:
            raise BadParameter(name, f"{name} is given more than once")


class _ArchivedFile(web.FileResponse):
    """A stored file; a ``Range`` that is not a byte range (empty, another unit, malformed) is ignored.

    RFC 9110 (14.2) lets a server ignore a Range it cannot use, and the whole file is the useful answer; aiohttp
    would answer 416, which the document keeps for a range that starts past the end of the file.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            request.http_range  # noqa: B018 (parsing is the check)
        except ValueError:
            headers = CIMultiDict(request.headers)
            del headers["Range"]
            request = request.clone(headers=headers)
        return await super().prepare(request)


def _attachment(filename: str) -> str:
    """A Content-Disposition naming the original file: an ASCII fallback, and the exact name (RFC 6266)."""
    fallback = re.sub(r"[^A-Za-z0-9._+-]", "_", filename) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
