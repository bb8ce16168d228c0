"""The catalog as the gateway sees it: its HTTP API, asked with the user's token or the gateway's own.

The gateway decides nothing about access itself. Who a token belongs to and which programs they may see
come from the catalog's ``GET /v1/me`` (its access rule's ``programs_visible_to``); backlogs come from the
catalog's search with the user's own token, so the catalog filters them. Only the feed of every change
(:meth:`CatalogClient.changes`) uses the gateway's administrator token, and the gateway passes on from it
only what ``/v1/me`` says the user may see. Answers are read with the catalog's own models
(:mod:`skyport.api.catalog`), and refusals by their ``code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from skyport.api import catalog as api
from skyport.api.errors import ErrorCode, error_code
from skyport.nights import NightRule, Nights

AnswerT = TypeVar("AnswerT", bound=BaseModel)

Program = tuple[str, str]
"""(mission, propid)"""


class CatalogUnavailable(Exception):
    """The catalog could not be reached or failed; the gateway tries again later."""


class CatalogRefused(Exception):
    """The catalog answered with an error that is the caller's (400, 403, 404)."""

    def __init__(self, status: int, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Membership:
    mission: str
    propid: str
    role: str | None
    title: str | None

    @property
    def program(self) -> Program:
        return (self.mission, self.propid)

    def as_json(self) -> dict[str, Any]:
        return {"mission": self.mission, "propid": self.propid, "role": self.role, "title": self.title}


@dataclass(frozen=True)
class User:
    """A token's owner and the programs whose proprietary data they may see, as the catalog says."""

    username: str
    is_admin: bool
    memberships: tuple[Membership, ...]

    @property
    def programs(self) -> frozenset[Program]:
        return frozenset(m.program for m in self.memberships)


@dataclass(frozen=True)
class Page:
    products: list[api.Product]
    next_cursor: str
    more: bool


class CatalogClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, service_token: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._service_token = service_token
        self._nights: Nights | None = None

    async def user(self, token: str) -> User | None:
        """Who ``token`` belongs to, or None when the catalog does not know it (unknown or revoked)."""
        try:
            me = _parse(api.Me, await self._get("/v1/me", token), "/v1/me")
        except CatalogRefused as exc:
            if exc.code is ErrorCode.UNAUTHORIZED:
                return None
            raise
        memberships = tuple(Membership(p.mission, p.propid, p.role, p.title) for p in me.programs)
        return User(me.username, me.is_admin, memberships)

    async def search(self, token: str, params: Sequence[tuple[str, str]]) -> Page:
        """One page of ``GET /v1/products`` as the user sees it (the catalog applies its access rule)."""
        return _page(await self._get("/v1/products", token, params))

    async def nights(self) -> Nights:
        """Each mission's observing-night rule, as the catalog has it (asked once: it is configuration)."""
        if self._nights is None:
            described = _parse(api.NightRules, await self._get("/v1/nights", self._service_token), "/v1/nights")
            try:
                rules = {r.mission: _rule(r) for r in described.missions}
                self._nights = Nights(rules, _rule(described.default))
            except ValueError as exc:
                raise CatalogUnavailable(f"the catalog's /v1/nights is not what the gateway expects: {exc}") from exc
        return self._nights

    async def position(self) -> str:
        """The newest cursor in the catalog order (the gateway's administrator token)."""
        return _parse(api.Position, await self._get("/v1/position", self._service_token), "/v1/position").cursor

    async def changes(self, cursor: str, limit: int) -> Page:
        """Every change after ``cursor``, in catalog order (the gateway's administrator token)."""
        return _page(await self._get("/v1/products", self._service_token, (("cursor", cursor), ("limit", str(limit)))))

    async def _get(self, path: str, token: str, params: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        try:
            async with self.session.get(
                self.base_url + path, params=list(params), headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status >= 500:
                    raise CatalogUnavailable(f"the catalog answered {response.status} to {path}")
                body = await response.json(content_type=None)
                if response.status >= 400:
                    message = body.get("error") if isinstance(body, dict) else None
                    raise CatalogRefused(response.status, str(message or f"HTTP {response.status}"), error_code(body))
                if not isinstance(body, dict):
                    raise CatalogUnavailable(f"the catalog answered {path} with something that is not an object")
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CatalogUnavailable(f"the catalog at {self.base_url} could not answer {path}: {exc!r}") from exc


def _parse(model: type[AnswerT], body: dict[str, Any], path: str) -> AnswerT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise CatalogUnavailable(f"the catalog's {path} is not what the gateway expects: {exc}") from exc


def _rule(described: api.NightRule) -> NightRule:
    return NightRule.model_validate({"time_zone": described.time_zone, "boundary": described.boundary})


def _page(body: dict[str, Any]) -> Page:
    page = _parse(api.ProductPage, body, "/v1/products")
    return Page(page.products, page.next_cursor, page.more)
