"""Wiring of the notifier: the dataset-event consumer, the delivery loop and the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.notifier.catalog_client import CatalogClient
from services.notifier.delivery import Deliverer, DeliveryMetrics
from services.notifier.handlers.events import access_subscription, dataset_subscription
from services.notifier.handlers.http import NotifierApi
from services.notifier.levels import LevelOrder
from services.notifier.mail import Composer
from services.notifier.mailer import Mailer, SmtpMailer
from services.notifier.matching import Matcher
from services.notifier.settings import NotifierSettings
from services.notifier.signing import Signer
from services.notifier.webhooks import PublicResolver, WebhookSender
from skyport.instruments import load_instruments
from skyport.runtime import ServiceContext, ServiceSpec


@dataclass(frozen=True)
class Parts:
    """What the notifier is made of, built from its settings: the lifespan's, or a test's with a mailer of its own."""

    levels: LevelOrder
    signer: Signer
    composer: Composer
    matcher: Matcher


def parts(settings: NotifierSettings) -> Parts:
    levels = LevelOrder.of(load_instruments(settings.instruments_dir))
    signer = Signer(settings.notifier_signing_secret.get_secret_value(), settings.notifier_public_url)
    composer = Composer(signer, settings.mail_from, settings.notifier_listed_files, settings.notifier_page_url)
    return Parts(levels, signer, composer, Matcher(levels))


def deliverer(
    ctx: ServiceContext[NotifierSettings],
    catalog: CatalogClient,
    composer: Composer,
    mailer: Mailer,
    webhooks: WebhookSender | None = None,
) -> Deliverer:
    s = ctx.settings
    return Deliverer(
        ctx.database,
        catalog,
        composer,
        mailer,
        poll_interval=s.notifier_poll_interval,
        coalesce_window=s.notifier_coalesce_window,
        fast_per_hour=s.notifier_fast_per_hour,
        max_attempts=s.notifier_max_attempts,
        metrics=DeliveryMetrics(ctx.metrics.registry),
        webhooks=webhooks,
    )


@asynccontextmanager
async def lifespan(ctx: ServiceContext[NotifierSettings]) -> AsyncIterator[None]:
    settings = ctx.settings
    made = parts(settings)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        catalog = CatalogClient(
            session, settings.notifier_catalog_url, settings.notifier_catalog_token.get_secret_value()
        )
        # The receivers' session is not the catalog's: their own timeout, and no cookies kept between receivers.
        # Outside development its connections resolve names only to public addresses (SSRF: webhooks.py).
        allow_private = settings.notifier_webhook_allow_http
        connector = aiohttp.TCPConnector(resolver=None if allow_private else PublicResolver())
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as hooks:
            webhooks = WebhookSender(hooks, timeout=settings.notifier_webhook_timeout, allow_private=allow_private)
            sender = deliverer(ctx, catalog, made.composer, SmtpMailer(settings), webhooks)
            await ctx.subscribe(dataset_subscription(ctx.database, made.matcher, settings, sender.wake))
            await ctx.subscribe(access_subscription(ctx.database))
            ctx.supervise("delivery", sender.run)
            try:
                api = NotifierApi(
                    ctx.database,
                    catalog,
                    made.signer,
                    made.levels,
                    allow_http_webhooks=settings.notifier_webhook_allow_http,
                    coalesce_window=settings.notifier_coalesce_window,
                    fast_per_hour=settings.notifier_fast_per_hour,
                )
                async with ctx.serve_http(api.app(), settings.notifier_host, settings.notifier_port, api="notifier"):
                    yield
            finally:
                # Before the sessions close under it: a round cut short rolls back, its notices wait.
                await ctx.supervisor.stop(["delivery"])


service = ServiceSpec(
    name="notifier",
    settings_class=NotifierSettings,
    lifespan=lifespan,
    migrations=Path(__file__).with_name("migrations"),
)
