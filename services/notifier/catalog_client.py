"""The catalog as the notifier asks it: who a token belongs to, what a subscriber may see now, a program's title.

The notifier keeps no copy of who may see what. When a notice is sent it asks the catalog, with an administrator's
token, which of the notice's files (and, for a notice without files, which programs' proprietary data) the
subscriber may see at that moment (``POST /v1/access/visible``): one question per email, answered by the catalog's
one rule (``services/catalog/access.py``) in one query, administrators included.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    async def visible(
        self, username: str, archive_ids: Sequence[str], programs: Sequence[tuple[str, str]] = ()
    ) -> api.Visible:
        """Which of ``archive_ids`` and ``programs`` (proprietary data) ``username`` may see now."""
        path = "/v1/access/visible"
        ids = sorted(set(archive_ids))
        asked = [api.ProgramAsked(mission=m, propid=p) for m, p in sorted(set(programs))]
        answers = []
        # The catalog takes at most MAX_VISIBLE_IDS archive IDs a question: a digest of more asks several times.
        for start in range(0, max(len(ids), 1), api.MAX_VISIBLE_IDS):
            question = api.VisibleQuestion(
                username=username,
                archive_ids=ids[start : start + api.MAX_VISIBLE_IDS],
                programs=asked if start == 0 else [],
            )
            status, body = await self._request("POST", path, self._service_token, question.model_dump(mode="json"))
            answers.append(_parse(api.Visible, status, body, path))
        if len(answers) == 1:
            return answers[0]
        return answers[0].model_copy(
            update={"archive_ids": sorted(i for answer in answers for i in answer.archive_ids)}
        )

    async def _get(self, path: str, token: str) -> tuple[int, Any]:
        return await self._request("GET", path, token)

    async def _request(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        try:
            async with self.session.request(
                method, self.base_url + path, headers={"Authorization": f"Bearer {token}"}, json=body
            ) as response:
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


@dataclass(frozen=True)
class Seen:
    """What one subscriber may see now of one email's notices, as the catalog answered."""

    archive_ids: frozenset[str]
    programs: frozenset[tuple[str, str]]
    """Programs whose proprietary data the subscriber sees (asked only for notices that list no files)."""

    def files(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [f for f in files if f.get("archive_id") in self.archive_ids]


@dataclass
class Titles:
    """Programs' titles, asked of the catalog once per program for one round of sending."""

    catalog: CatalogClient
    _titles: dict[tuple[str, str], str | None] = field(default_factory=dict)

    async def of(self, mission: str, propid: str) -> str | None:
        key = (mission, propid)
        if key not in self._titles:
            program = await self.catalog.members(mission, propid)
            self._titles[key] = None if program is None else program.title
        return self._titles[key]
