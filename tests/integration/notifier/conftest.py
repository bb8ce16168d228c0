"""The notifier on the real RabbitMQ and PostgreSQL, with the catalog in-process and an aiosmtpd server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.catalog import cli as catalog_cli
from services.notifier.app import parts
from services.notifier.app import service as notifier_service
from services.notifier.catalog_client import CatalogClient
from services.notifier.delivery import Deliverer, DeliveryMetrics
from services.notifier.handlers.events import access_subscription, dataset_subscription
from services.notifier.handlers.http import NotifierApi
from services.notifier.mailer import Mailer, SmtpMailer
from services.notifier.settings import NotifierSettings
from services.notifier.webhooks import WebhookSender
from skyport.bus import Bus
from skyport.db import Database
from tests.support.catalog import CatalogInProcess, catalog_database
from tests.support.catalog_api import ApiClient, serve_catalog_api
from tests.support.schemas import migrated_schema
from tests.support.servers import DATABASE_URL
from tests.support.smtp import Mailbox, smtp_server

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@dataclass
class World:
    """One test's archive: the catalog (consumer, relay, API), its people, one program, and the notifier."""

    unique: str
    propid: str
    catalog: CatalogInProcess
    catalog_api: ApiClient
    notifier_db: Database
    notifier: TestClient[Any, Any]
    deliverer: Deliverer
    mailbox: Mailbox
    settings: NotifierSettings
    catalog_client: CatalogClient
    tokens: dict[str, str] = field(default_factory=dict)
    dns: dict[str, list[str]] = field(default_factory=dict)
    """What the API's resolver answers for webhook hosts (a fake: tests name no real hosts); others do not resolve."""

    async def resolve(self, host: str) -> list[str]:
        if host not in self.dns:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return self.dns[host]

    def new_deliverer(
        self,
        mailer: Mailer | None = None,
        clock: Callable[[], datetime] | None = None,
        *,
        webhooks: WebhookSender | None = None,
        max_attempts: int = 3,
    ) -> Deliverer:
        """Another delivery loop on the same database (a restarted notifier), with its own mailer and clock (and
        webhook sender: the fixture's loop has none, so it leaves webhook notices to a test's)."""
        return Deliverer(
            self.notifier_db,
            self.catalog_client,
            parts(self.settings).composer,
            mailer or SmtpMailer(self.settings),
            poll_interval=0.1,
            coalesce_window=self.settings.notifier_coalesce_window,
            fast_per_hour=self.settings.notifier_fast_per_hour,
            max_attempts=max_attempts,
            metrics=DeliveryMetrics(CollectorRegistry()),
            webhooks=webhooks,
            **({} if clock is None else {"clock": clock}),
        )

    async def rows(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return list(await self.notifier_db.pool.fetch(query, *args))

    async def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        """The notifier's API as ``who`` calls it: the status and the JSON answer (None when there is none)."""
        response = await self.notifier.request(
            method, path, json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )
        return response.status, (await response.json() if response.content_length != 0 else None)

    async def subscribe(self, who: str, **body: Any) -> dict[str, Any]:
        response = await self.notifier.post(
            "/v1/subscriptions", json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )
        answer = await response.json()
        assert response.status == 201, answer
        return dict(answer)


@pytest.fixture
async def world(bus: Bus, unique: str, mailbox: tuple[Mailbox, int], tmp_path: Path) -> AsyncIterator[World]:
    box, smtp_port = mailbox
    propid = f"N{unique}"
    async with catalog_database(DATABASE_URL, f"test_{unique}_cat") as catalog_db:
        for name, admin in (("alice", False), ("bob", False), ("carol", True), ("notifier", True)):
            await catalog_cli.add_user(catalog_db, name, email=f"{name}@example.org", admin=admin)
        await catalog_cli.add_program(catalog_db, "KECK", propid, title="Hot Jupiters", pi="alice")
        tokens = {
            name: await catalog_cli.issue_token(catalog_db, name) for name in ("alice", "bob", "carol", "notifier")
        }
        async with serve_catalog_api(catalog_db, tmp_path / "archive") as api, notifier_database(unique) as ndb:
            catalog = CatalogInProcess(catalog_db, bus, unique)
            await catalog.start()
            settings = NotifierSettings(
                notifier_public_url="http://notifier.test",
                notifier_catalog_url=api.public_url,
                notifier_catalog_token=tokens["notifier"],
                notifier_signing_secret="s" * 40,
                smtp_host="127.0.0.1",
                smtp_port=smtp_port,
                smtp_security="none",
                instruments_dir=REPO / "deploy" / "instruments",
                notifier_poll_interval=0.1,
                notifier_coalesce_window=2.0,
            )
            made = parts(settings)
            async with aiohttp.ClientSession() as session:
                client = CatalogClient(session, api.public_url, tokens["notifier"])
                deliverer = Deliverer(
                    ndb,
                    client,
                    made.composer,
                    SmtpMailer(settings),
                    poll_interval=0.1,
                    coalesce_window=settings.notifier_coalesce_window,
                    fast_per_hour=settings.notifier_fast_per_hour,
                    max_attempts=3,
                    metrics=DeliveryMetrics(CollectorRegistry()),
                )
                await bus.subscribe(
                    dataset_subscription(
                        ndb,
                        made.matcher,
                        settings,
                        deliverer.wake,
                        queue=f"test.{unique}.notifier",
                        bindings=(f"dataset.*.*.*.{propid.lower()}",),
                    )
                )
                await bus.subscribe(
                    access_subscription(
                        ndb,
                        queue=f"test.{unique}.notifier-access",
                        bindings=(f"access.changed.*.{propid.lower()}",),
                    )
                )
                loop = asyncio.create_task(deliverer.run())
                dns = {"receiver.example": ["93.184.215.14"]}  # a public address
                world = World(unique, propid, catalog, api, ndb, None, deliverer, box, settings, client, tokens, dns)  # type: ignore[arg-type]
                api_app = NotifierApi(
                    ndb,
                    client,
                    made.signer,
                    made.levels,
                    coalesce_window=settings.notifier_coalesce_window,
                    fast_per_hour=settings.notifier_fast_per_hour,
                    resolve=world.resolve,
                ).app()
                server = TestClient(TestServer(api_app))
                world.notifier = server
                await server.start_server()
                try:
                    yield world
                finally:
                    await server.close()
                    loop.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop
                    await catalog.stop_relay()


@contextlib.asynccontextmanager
async def notifier_database(unique: str) -> AsyncIterator[Database]:
    assert notifier_service.migrations is not None
    async with migrated_schema(DATABASE_URL, f"test_{unique}_ntf", {"notifier": notifier_service.migrations}) as db:
        yield db
