"""A service's long-lived loops under the runtime's supervisor: restarted when they die, and readiness says so."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from skyport import runtime
from skyport.runtime import ServiceContext, ServiceSpec, Supervisor, run_services
from skyport.settings import CommonSettings
from tests.support.waiting import eventually


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_HEALTH_HOST", "127.0.0.1")
    monkeypatch.setenv("SKYPORT_HEALTH_PORT", "0")
    monkeypatch.setenv("SKYPORT_LOG_FORMAT", "json")
    monkeypatch.setenv("SKYPORT_SHUTDOWN_TIMEOUT", "5")


class Flaky:
    """A loop that dies at once while ``broken``, and otherwise runs until it is stopped."""

    def __init__(self) -> None:
        self.runs = 0
        self.broken = True
        self.running = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.broken:
            raise RuntimeError("journal index corrupt")
        self.running.set()
        await asyncio.Event().wait()


async def test_a_loop_that_raises_is_restarted_logged_and_fails_readiness_after_three_deaths() -> None:
    loop = Flaky()
    with capture_logs() as logs:
        supervisor = Supervisor("test", first_delay=0.01, max_delay=0.05, healthy_after=1.0)
        supervisor.supervise("rescan", loop)
        assert await supervisor.ready()
        await eventually(lambda: loop.runs >= 4, what="the loop run again after each death")
        assert not await supervisor.ready()
        assert supervisor.failing() == ["rescan"]

        # Mended, it is ready again once it has run a while since its last restart.
        loop.broken = False
        await asyncio.wait_for(loop.running.wait(), 10)
        await eventually(supervisor.ready, what="readiness back after a healthy run")
        await supervisor.stop()

    died = [entry for entry in logs if entry["event"] == "loop died; restarting it"]
    assert len(died) >= 3
    assert all(entry["log_level"] == "error" and entry["loop"] == "rescan" for entry in died)
    assert [entry["deaths"] for entry in died[:3]] == [1, 2, 3]
    assert isinstance(died[0]["exc_info"], RuntimeError)
    (critical,) = [entry for entry in logs if entry["event"] == "loop keeps dying; not ready"]
    assert critical["log_level"] == "critical"


async def test_a_loop_that_ends_by_itself_is_restarted_and_said_at_error() -> None:
    runs = 0

    async def ends() -> None:
        nonlocal runs
        runs += 1

    with capture_logs() as logs:
        supervisor = Supervisor("test", first_delay=0.01, max_delay=0.05)
        supervisor.supervise("follow", ends)
        await eventually(lambda: runs >= 2, what="the loop run again")
        await supervisor.stop()
    ended = [entry for entry in logs if entry["event"] == "loop ended by itself; restarting it"]
    assert ended
    assert ended[0]["log_level"] == "error"


async def test_a_stopped_loop_is_not_restarted_and_its_end_is_no_fault() -> None:
    loop = Flaky()
    loop.broken = False
    with capture_logs() as logs:
        supervisor = Supervisor("test", first_delay=0.01)
        task = supervisor.supervise("watch", loop)
        await asyncio.wait_for(loop.running.wait(), 10)
        await supervisor.stop(["watch"])
    assert task.done()
    assert loop.runs == 1
    assert [entry for entry in logs if entry["log_level"] in ("error", "critical")] == []
    assert await supervisor.ready()


async def test_a_second_loop_of_the_same_name_is_refused() -> None:
    supervisor = Supervisor("test")
    supervisor.supervise("feed", asyncio.Event().wait)
    with pytest.raises(ValueError, match="'feed' already runs"):
        supervisor.supervise("feed", asyncio.Event().wait)
    await supervisor.stop()


async def test_a_service_whose_loop_keeps_dying_is_not_ready_and_keeps_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "LOOP_FIRST_DELAY", 0.01)
    health: list[runtime.HealthServer] = []

    class RecordedHealthServer(runtime.HealthServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            health.append(self)

    monkeypatch.setattr(runtime, "HealthServer", RecordedHealthServer)
    loop = Flaky()

    @asynccontextmanager
    async def lifespan(ctx: ServiceContext[CommonSettings]) -> AsyncIterator[None]:
        ctx.supervise("release scheduler", loop)
        yield

    stop = asyncio.Event()
    running = asyncio.create_task(
        run_services([ServiceSpec("supervised_test", CommonSettings, lifespan, uses_bus=False)], stop=stop)
    )
    try:
        await eventually(lambda: bool(health) and health[0].port is not None, what="the health server")
        url = f"http://127.0.0.1:{health[0].port}/readyz"
        await eventually(lambda: loop.runs >= 3, what="three deaths")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 503
            assert (await response.json())["checks"] == {"supervised_test:loops": False}
        assert not running.done()  # a dying loop is restarted, never a reason to stop the process
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    died = [line for line in lines if line["event"] == "loop died; restarting it"]
    assert died
    assert (died[0]["service"], died[0]["loop"]) == ("supervised_test", "release scheduler")
    assert "journal index corrupt" in died[0]["exception"]
