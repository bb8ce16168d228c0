"""Test helpers for the catalog API: the app served in-process on a real port, a client that knows who is who,
and archived files whose bytes are in archive storage."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer, unused_port
from prometheus_client import CollectorRegistry

from services.catalog.cataloguing import Cataloguer
from services.catalog.handlers.http import CatalogApi
from services.catalog.settings import CatalogSettings
from skyport.db import Database
from skyport.events import FileArchived

Params = Mapping[str, str] | Sequence[tuple[str, str]]


class ApiClient:
    """Requests to the catalog API as one of the test's people (``who`` names a token; "anonymous" sends none)."""

    def __init__(
        self, client: TestClient[Any, Any], api: CatalogApi, public_url: str, registry: CollectorRegistry
    ) -> None:
        self.client = client
        self.api = api
        self.registry = registry
        self.public_url = public_url
        self.tokens: dict[str, str] = {}

    def headers(self, who: str) -> dict[str, str]:
        return {} if who == "anonymous" else {"Authorization": f"Bearer {self.tokens.get(who, who)}"}

    async def request(
        self,
        method: str,
        path: str,
        *,
        who: str = "anonymous",
        params: Params | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientResponse:
        return await self.client.request(
            method,
            path,
            params=params,
            json=json,
            data=data,
            headers={**self.headers(who), **(headers or {})},
        )

    async def get(
        self,
        path: str,
        *,
        who: str = "anonymous",
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientResponse:
        return await self.request("GET", path, who=who, params=params, headers=headers)

    async def json(self, path: str, *, who: str = "anonymous", params: Params | None = None, status: int = 200) -> Any:
        """GET a JSON document, failing the test with the body if the status is not ``status``."""
        response = await self.get(path, who=who, params=params)
        body = await response.json()
        assert response.status == status, (path, params, who, response.status, body)
        return body

    async def search_ids(self, *, who: str = "anonymous", params: Params | None = None) -> list[str]:
        body = await self.json("/v1/products", who=who, params=params)
        return [p["archive_id"] for p in body["products"]]


@asynccontextmanager
async def serve_catalog_api(db: Database, storage_dir: Path, **api_options: Any) -> AsyncIterator[ApiClient]:
    """The catalog API on a fresh port of 127.0.0.1, its public URL that address (so download scripts work)."""
    port = unused_port()
    public_url = f"http://127.0.0.1:{port}"
    settings = CatalogSettings(catalog_public_url=public_url, storage_dir=storage_dir)
    registry = CollectorRegistry()
    api = CatalogApi(db, settings, registry, **api_options)
    client: TestClient[Any, Any] = TestClient(TestServer(api.app(), host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield ApiClient(client, api, public_url, registry)
    finally:
        await client.close()


def with_content(data: FileArchived, content: bytes, **changes: Any) -> FileArchived:
    """The event describing ``content`` (its size and sha256), with other fields changed as given."""
    return data.model_copy(
        update={"size_bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(), **changes}
    )


async def archive_file(
    db: Database, storage_dir: Path, data: FileArchived, content: bytes, cataloguer: Cataloguer
) -> FileArchived:
    """Put ``content`` where the ingestor would have stored it, and catalogue it as the consumer does."""
    data = with_content(data, content)
    path = storage_dir / data.storage_path
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, content)
    async with db.transaction() as conn:
        await cataloguer.catalogue(conn, data)
    return data
