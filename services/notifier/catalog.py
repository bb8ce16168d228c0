"""The catalog as the notifier asks it: who a token belongs to, a program's title and members, a product's state.

The notifier keeps no copy of who may see what. When a notice is sent it asks the catalog, with an administrator's
token, for the program's members and each product's state (``Visibility``), and applies the catalog's one rule
as the catalog's answers state it: a product is visible to its program's members, and to anyone once public.
The rule's third clause (administrators see everything) is not applied: the members answer does not say who is an
administrator, so an administrator subscribed to someone else's program is told only of public data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from skyport.api import catalog as api
from skyport.api.errors import ErrorCode, error_code

AnswerT = TypeVar("AnswerT", bound=BaseModel)


class CatalogUnavailable(Exception):
    """The catalog could not be reached or failed: what depended on it is tried again later."""


class CatalogClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, service_token: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._service_token = service_token

    async def me(self, token: str) -> api.Me | None:
        """Who ``token`` belongs to; None when the catalog does not know it (unknown, revoked)."""
        status, body = await self._get("/v1/me", token)
        if status == 401:
            return None
        return _parse(api.Me, status, body, "/v1/me")

    async def members(self, mission: str, propid: str) -> api.Members | None:
        """A program's title and members; None for a program the catalog does not know (yet)."""
        path = f"/v1/programs/{mission}/{propid}/members"
        status, body = await self._get(path, self._service_token)
        if status == 404:
            return None
        return _parse(api.Members, status, body, path)

    async def product(self, archive_id: str) -> api.Product | None:
        """A product's current state; None when the catalog has no such product."""
        path = f"/v1/products/{archive_id}"
        status, body = await self._get(path, self._service_token)
        if status == 404:
            return None
        return _parse(api.Product, status, body, path)

    async def _get(self, path: str, token: str) -> tuple[int, Any]:
        try:
            async with self.session.get(self.base_url + path, headers={"Authorization": f"Bearer {token}"}) as response:
                if response.status >= 500:
                    raise CatalogUnavailable(f"the catalog answered {response.status} to {path}")
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CatalogUnavailable(f"the catalog at {self.base_url} could not answer {path}: {exc!r}") from exc


def _parse(model: type[AnswerT], status: int, body: Any, path: str) -> AnswerT:
    if status != 200:
        code = error_code(body) if isinstance(body, dict) else None
        if code is ErrorCode.UNAUTHORIZED or code is ErrorCode.FORBIDDEN:
            raise CatalogUnavailable(f"the catalog refused the notifier's token for {path} ({status})")
        raise CatalogUnavailable(f"the catalog answered {status} to {path}: {body!r}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise CatalogUnavailable(f"the catalog's {path} is not what the notifier expects: {exc}") from exc


@dataclass
class Visibility:
    """What subscribers may see now, asked of the catalog once per program and product for one round of sending."""

    catalog: CatalogClient
    _programs: dict[tuple[str, str], api.Members | None] = field(default_factory=dict)
    _public: dict[str, bool] = field(default_factory=dict)

    async def program(self, mission: str, propid: str) -> api.Members | None:
        key = (mission, propid)
        if key not in self._programs:
            self._programs[key] = await self.catalog.members(mission, propid)
        return self._programs[key]

    async def is_member(self, username: str, mission: str, propid: str) -> bool:
        program = await self.program(mission, propid)
        return program is not None and any(m.username == username for m in program.members)

    async def is_public(self, archive_id: str) -> bool:
        if archive_id not in self._public:
            product = await self.catalog.product(archive_id)
            self._public[archive_id] = product is not None and product.public
        return self._public[archive_id]

    async def visible_files(
        self, username: str, mission: str, propid: str, files: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The files of a notice ``username`` may see now: all for a member, the public ones for anyone else."""
        if await self.is_member(username, mission, propid):
            return files
        return [f for f in files if await self.is_public(f["archive_id"])]
