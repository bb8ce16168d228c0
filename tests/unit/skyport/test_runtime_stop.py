"""Stopping a service: a client left connected never holds the stop, and a slow stop says what it waits for."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from skyport import runtime
from skyport.runtime import ServiceContext, ServiceSpec, run_services
from skyport.settings import CommonSettings


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_HEALTH_HOST", "127.0.0.1")
    monkeypatch.setenv("SKYPORT_HEALTH_PORT", "0")
    monkeypatch.setenv("SKYPORT_LOG_FORMAT", "json")
    monkeypatch.setenv("SKYPORT_SHUTDOWN_TIMEOUT", "60")


def http_service(port: asyncio.Future[int]) -> Callable[[ServiceContext], AbstractAsyncContextManager[None]]:
    """A service with an HTTP API whose WebSocket handler, like most, just reads until the client leaves."""

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    @asynccontextmanager
    async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_get("/socket", socket)
        app.router.add_get("/ping", ping)
        async with ctx.serve_http(app, "127.0.0.1", 0, api="test") as bound:
            port.set_result(bound)
            yield

    return lifespan


async def test_an_open_websocket_and_a_keep_alive_connection_do_not_hold_the_stop() -> None:
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    spec = ServiceSpec("stop_test", CommonSettings, http_service(port), uses_bus=False)
    running = asyncio.create_task(run_services([spec], stop=stop))
    base = f"http://127.0.0.1:{await asyncio.wait_for(port, 30)}"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{base}/socket")
        closing = asyncio.create_task(ws.receive())  # a browser reads what the server sends
        async with http.get(f"{base}/ping") as response:  # and keeps its connection open, idle
            assert await response.text() == "pong"

        stop.set()
        # The service would wait up to its shutdown timeout (60 s) for a request in flight.
        await asyncio.wait_for(running, 30)

        await asyncio.wait_for(closing, 5)
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


async def test_a_slow_stop_says_what_it_is_still_waiting_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "STILL_STOPPING_EVERY", 0.1)
    monkeypatch.setenv("SKYPORT_SHUTDOWN_TIMEOUT", "1")
    started = asyncio.Event()

    async def finish_uploads(timeout: float) -> None:
        await asyncio.sleep(timeout)  # work in flight that takes all the time it is given

    @asynccontextmanager
    async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
        ctx.on_stop(finish_uploads)
        started.set()
        yield

    stop = asyncio.Event()
    running = asyncio.create_task(
        run_services([ServiceSpec("uploads_test", CommonSettings, lifespan, uses_bus=False)], stop=stop)
    )
    await asyncio.wait_for(started.wait(), 30)
    stop.set()
    await asyncio.wait_for(running, 30)

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    reports = [line for line in lines if line["event"] == "still stopping"]
    assert reports, lines
    waiting_for = reports[0]["waiting_for"]
    assert len(waiting_for) == 1
    assert waiting_for[0].startswith("uploads_test: finish_uploads (waits in finish_uploads at test_runtime_stop.py:")
    assert lines[-1]["event"] == "stopped"


async def test_a_stop_hook_that_never_ends_is_abandoned_loudly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "STOP_GRACE", 0.5)
    monkeypatch.setenv("SKYPORT_SHUTDOWN_TIMEOUT", "0.5")
    started = asyncio.Event()

    stuck: list[asyncio.Task[object]] = []

    async def stop_watching(timeout: float) -> None:
        stuck.extend(filter(None, [asyncio.current_task()]))
        with contextlib.suppress(asyncio.CancelledError):  # swallows its cancellation, as a careless except does
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    @asynccontextmanager
    async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
        ctx.on_stop(stop_watching)
        started.set()
        yield

    stop = asyncio.Event()
    running = asyncio.create_task(
        run_services([ServiceSpec("stuck_test", CommonSettings, lifespan, uses_bus=False)], stop=stop)
    )
    await asyncio.wait_for(started.wait(), 30)
    stop.set()
    await asyncio.wait_for(running, 30)  # without the limit, this would wait for ever

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    abandoned = [line for line in lines if line["event"] == "a step of the stop overran its time; abandoned"]
    assert [line["step"] for line in abandoned] == ["stuck_test: stop_watching"]
    assert lines[-1]["event"] == "stopped"
    for task in stuck:  # the test's own clean-up: what the service abandoned
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
