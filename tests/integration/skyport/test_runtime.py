"""A service as a real process: health, metrics, refusing a stale schema, and SIGTERM with work in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from skyport.bus import Bus, Subscription
from skyport.events import CloudEvent, IngestFailed
from tests.support.waiting import eventually

SERVICE = "tests.support.slow_service:service"


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    health_port: int
    lines: list[dict[str, Any]]


def service_env(amqp_url: str, database_url: str, **settings: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SKYPORT_BUS_URL=amqp_url,
        SKYPORT_DATABASE_URL=database_url,
        SKYPORT_HEALTH_PORT="0",
        SKYPORT_HEALTH_HOST="127.0.0.1",
        SKYPORT_LOG_FORMAT="json",
    )
    env.update({f"SKYPORT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def skyport(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skyport",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _start(env: dict[str, str]) -> Running:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "skyport", "run", SERVICE, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not raw:
                raise AssertionError(f"the service exited before it was ready: {lines}")
            line = json.loads(raw)
            lines.append(line)
            if line.get("event") == "ready":
                running = Running(proc, int(line["health_port"]), lines)
                asyncio.get_running_loop().create_task(_collect(proc, lines))
                return running
        raise AssertionError("the service was not ready within 30 s")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


@pytest.fixture
async def start_service() -> AsyncIterator[Callable[[dict[str, str]], Awaitable[Running]]]:
    """Starts the service in a process of its own; one a failed test left running is killed afterwards."""
    started: list[Running] = []

    async def start(env: dict[str, str]) -> Running:
        running = await _start(env)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def _collect(proc: asyncio.subprocess.Process, lines: list[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        lines.append(json.loads(raw))


@pytest.fixture
async def migrated(amqp_url: str, database_url: str) -> None:
    code, out = await skyport("migrate", SERVICE, env=service_env(amqp_url, database_url))
    assert code == 0, out
    assert "slow_test:" in out


async def handled_ids(database_url: str, ids: list[str]) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id FROM slow_test.handled WHERE event_id = ANY($1)", ids)
    finally:
        await conn.close()
    return {r["event_id"] for r in rows}


async def publish_many(bus: Bus, queue: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        event = CloudEvent.create(IngestFailed(transfer_id=f"{queue}-{i}", reason="test"), source="/tests")
        await bus.publish(event, routing_key=f"test.{queue}")
        ids.append(event.id)
    return ids


async def drain(bus: Bus, queue: str) -> set[str]:
    """Consume what is left in ``queue``, until it has been quiet for a second."""
    left: list[str] = []

    async def take(event: CloudEvent[Any]) -> None:
        left.append(event.id)

    await bus.subscribe(Subscription(queue, (f"test.{queue}",), take))
    seen = -1
    while seen != len(left):
        seen = len(left)
        await asyncio.sleep(1.0)
    return set(left)


async def test_sigterm_lets_in_flight_work_finish_and_loses_nothing(
    migrated: None,
    amqp_url: str,
    database_url: str,
    bus: Bus,
    unique: str,
    start_service: Callable[[dict[str, str]], Awaitable[Running]],
) -> None:
    env = service_env(
        amqp_url,
        database_url,
        slow_queue=unique,
        slow_handle_seconds=0.3,
        slow_prefetch=8,
        shutdown_timeout=10,
    )
    service = await start_service(env)
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.health_port}"
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
            checks = (await response.json())["checks"]
            assert checks == {"bus": True, "database:slow_test": True, "slow_test:loops": True}

        ids = await publish_many(bus, unique, 60)
        await eventually(lambda: _at_least(handled_ids(database_url, ids), 10), what="some messages handled")
        async with http.get(f"{base}/metrics") as response:
            metrics = await response.text()
        assert (
            f'skyport_messages_handled_total{{event_type="ingest.failed",queue="{unique}",service="slow_test"}}'
            in metrics
        )

    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(service.proc.wait(), 20)
    assert code == 0
    assert time.monotonic() - started < 10 + 5
    assert any(line["event"] == "shutting down" for line in service.lines)

    handled = await handled_ids(database_url, ids)
    left = await drain(bus, unique)
    assert handled | left == set(ids), "every message is either handled or back on its queue"
    assert 10 <= len(handled) < 60


async def test_sigterm_returns_work_that_outlives_the_deadline_to_the_queue(
    migrated: None,
    amqp_url: str,
    database_url: str,
    bus: Bus,
    unique: str,
    start_service: Callable[[dict[str, str]], Awaitable[Running]],
) -> None:
    env = service_env(
        amqp_url, database_url, slow_queue=unique, slow_handle_seconds=60, slow_prefetch=4, shutdown_timeout=1
    )
    service = await start_service(env)
    ids = await publish_many(bus, unique, 10)
    await asyncio.sleep(1.0)  # let the service take its four messages (nothing can be observed: they hang)
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(service.proc.wait(), 20)
    assert code == 0
    assert time.monotonic() - started < 1 + 5
    assert await handled_ids(database_url, ids) == set()
    assert await drain(bus, unique) == set(ids)


async def test_a_service_refuses_to_start_on_a_schema_that_is_behind(amqp_url: str, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute("DROP SCHEMA IF EXISTS never_migrated_test CASCADE")
    await conn.close()
    code, out = await skyport(
        "run", "tests.support.slow_service:never_migrated", env=service_env(amqp_url, database_url)
    )
    assert code == 1
    assert "schema 'never_migrated_test' is behind the code" in out
    assert "run `skyport migrate` first" in out


async def test_run_names_the_services_it_knows_when_given_an_unknown_one(amqp_url: str, database_url: str) -> None:
    code, out = await skyport("run", "no-such-service", env=service_env(amqp_url, database_url))
    assert code == 2
    assert "unknown service 'no-such-service'" in out


async def _at_least(ids: Any, count: int) -> bool:
    return len(await ids) >= count
