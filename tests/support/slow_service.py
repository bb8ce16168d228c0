"""A small service for runtime tests: it consumes a queue slowly and records what it handled.

It is run as a real process (``skyport run tests.support.slow_service:service``) so that tests can send it
SIGTERM with messages in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import Field

from skyport.bus import Subscription
from skyport.db import idempotent
from skyport.events import CloudEvent
from skyport.runtime import ServiceContext, ServiceSpec
from skyport.settings import CommonSettings


class SlowSettings(CommonSettings):
    slow_queue: str = Field(default="slow-test", description="The queue to consume (bound to test.<queue>).")
    slow_handle_seconds: float = Field(default=0.2, description="How long each message takes.")
    slow_prefetch: int = Field(default=8, description="Messages handled at once.")


@asynccontextmanager
async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
    settings = ctx.settings
    assert isinstance(settings, SlowSettings)

    async def record(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        await asyncio.sleep(settings.slow_handle_seconds)
        await conn.execute("INSERT INTO handled (event_id) VALUES ($1)", event.id)

    await ctx.subscribe(
        Subscription(
            settings.slow_queue,
            (f"test.{settings.slow_queue}",),
            idempotent(ctx.database, "slow", record),
            prefetch=settings.slow_prefetch,
        )
    )
    yield


service = ServiceSpec("slow_test", SlowSettings, lifespan, migrations=Path(__file__).with_name("slow_service_sql"))
never_migrated = ServiceSpec(
    "never_migrated_test", SlowSettings, lifespan, migrations=Path(__file__).with_name("slow_service_sql")
)
