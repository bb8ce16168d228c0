"""The notifier's consumers: dataset events (each batch's notices recorded in one transaction with the events'
ids), and membership changes (a revocation drops what waits for that person of that program)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from services.notifier import storage
from services.notifier.matching import Matcher
from services.notifier.settings import NotifierSettings
from skyport.bus import Batching, Subscription
from skyport.bus.topology import NOTIFIER_ACCESS, NOTIFIER_DATASET
from skyport.db import Database, idempotent, idempotent_batch
from skyport.events import AccessChanged, CloudEvent, DatasetFirst, DatasetNew, DatasetPublic, DatasetRepro

log = structlog.get_logger("skyport.notifier")

CONSUMER = "notifier"
"""The name under which handled dataset event ids are recorded (skyport.db.idempotency)."""

ACCESS_CONSUMER = "notifier.access"

DATASET_MODELS = {model.event_type: model for model in (DatasetNew, DatasetFirst, DatasetRepro, DatasetPublic)}


def dataset_subscription(
    db: Database,
    matcher: Matcher,
    settings: NotifierSettings,
    wake: asyncio.Event,
    *,
    queue: str = NOTIFIER_DATASET.name,
    bindings: tuple[str, ...] = NOTIFIER_DATASET.bindings,
) -> Subscription:
    """Batches of dataset events matched in one transaction each (one by one when a batch fails); ``wake`` is set
    after each commit, so that the delivery loop sends fast notices at once."""

    async def record(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
        await matcher.record(conn, events)

    async def record_one(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        await matcher.record(conn, [event])

    batch = idempotent_batch(db, CONSUMER, record)
    single = idempotent(db, CONSUMER, record_one)

    async def on_batch(events: Sequence[CloudEvent[Any]]) -> None:
        await batch(events)
        wake.set()

    async def on_event(event: CloudEvent[Any]) -> None:
        await single(event)
        wake.set()

    return Subscription(
        queue,
        bindings,
        on_event,
        models=DATASET_MODELS,
        prefetch=2 * settings.notifier_batch_size,
        batching=Batching(on_batch, size=settings.notifier_batch_size, wait=settings.notifier_batch_wait),
    )


def access_subscription(
    db: Database,
    *,
    queue: str = NOTIFIER_ACCESS.name,
    bindings: tuple[str, ...] = NOTIFIER_ACCESS.bindings,
) -> Subscription:
    """Membership changes: a revoked person's waiting notices of that program are withheld at once.

    The guarantee is elsewhere: each notice is checked with the catalog when it is sent, so a revocation counts
    from its commit whether or not this event has come. This makes it visible sooner: ``skyport notifier status``
    no longer shows the notices as pending, and no digest is composed around them.
    """

    async def drop(conn: asyncpg.Connection, event: CloudEvent[AccessChanged]) -> None:
        change = event.data
        if change.change != "revoked":
            return
        dropped = await storage.drop_revoked(conn, change.username, change.mission.upper(), change.propid)
        log.info(
            "access revoked; waiting notices withheld",
            username=change.username,
            mission=change.mission,
            propid=change.propid,
            notices=dropped,
        )

    return Subscription(
        queue, bindings, idempotent(db, ACCESS_CONSUMER, drop), models={AccessChanged.event_type: AccessChanged}
    )
