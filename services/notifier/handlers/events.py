"""The dataset-event consumer: each batch's notices recorded in one transaction with the events' ids."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.notifier.matching import Matcher
from services.notifier.settings import NotifierSettings
from skyport.bus import Batching, Subscription
from skyport.bus.topology import NOTIFIER_DATASET
from skyport.db import Database, idempotent, idempotent_batch
from skyport.events import CloudEvent, DatasetFirst, DatasetNew, DatasetPublic, DatasetRepro

CONSUMER = "notifier"
"""The name under which handled dataset event ids are recorded (skyport.db.idempotency)."""

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
