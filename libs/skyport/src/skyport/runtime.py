"""The service runtime: open resources in order, serve health and metrics, stop cleanly on SIGTERM.

A service is described by a :class:`ServiceSpec`. :func:`run_services` runs one or several specs in one
process (``skyport run catalog ingestor``): they share the bus connection and the metrics registry, and
each gets its own database pool on its own schema. The order is fixed:

start:     settings (all of them, before anything is opened) → logging → bus → per service: database (schema
           checked) → its lifespan → health server
SIGTERM:   stop consuming (in-flight handlers get ``shutdown_timeout`` seconds, then return their messages
           unacknowledged) → health server → lifespans in reverse → supervised loops → pools → bus

A service's long-lived loops run under one :class:`Supervisor` (``ctx.supervise``): a loop that dies is logged
and restarted with back-off, and one that keeps dying makes the service not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from aiohttp import WSCloseCode, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from skyport.bus import Bus, Subscription, create_bus
from skyport.db import LIBRARY_MIGRATIONS, Database, Migrator, OutboxRelay
from skyport.db.idempotency import forget_processed_events
from skyport.errors import Unreachable
from skyport.events.envelope import configure_schema_base
from skyport.logging import configure_logging
from skyport.metrics import BusMetrics
from skyport.settings import CommonSettings, SettingsError, load_settings

log = structlog.get_logger("skyport.runtime")

# Longer than the outbox keeps sent rows and than any message waits in a queue or the dead-letter queue
# before an operator replays it: a duplicate older than this would be handled twice.
EVENT_ID_RETENTION = timedelta(days=30)

SettingsT = TypeVar("SettingsT", bound=CommonSettings)
# While a stop takes longer than this, say every so often what it still waits for: a silent wait looks hung.
STILL_STOPPING_EVERY = 5.0
# Beyond the shutdown timeout, how long a stop hook may take to give up its work in flight before it is abandoned.
STOP_GRACE = 5.0
# A supervised loop that dies this many times, each time within LOOP_HEALTHY_AFTER seconds of its restart, makes
# its service not ready: it is restarted still, but what it does (notice files, release data) is not being done.
LOOP_DEATHS_UNREADY = 3
LOOP_HEALTHY_AFTER = 60.0
# The back-off between two runs of a loop that died: doubling from LOOP_FIRST_DELAY, at most LOOP_MAX_DELAY.
LOOP_FIRST_DELAY = 1.0
LOOP_MAX_DELAY = 30.0


class ShutdownProgress:
    """The steps a stopping process still waits for, and where each waits (file, line and function)."""

    def __init__(self) -> None:
        self._steps: dict[str, tuple[asyncio.Task[Any] | None, Callable[[], str] | None]] = {}
        self._reporter: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def step(self, name: str, detail: Callable[[], str] | None = None) -> AsyncIterator[None]:
        """Count the body of the block as a step of the stop; ``detail()`` says more about it when it is logged."""
        self._steps[name] = (asyncio.current_task(), detail)
        try:
            yield
        finally:
            self._steps.pop(name, None)

    async def run(self, name: str, stopping: Callable[[], Awaitable[Any]], *, limit: float | None = None) -> None:
        """Run one step of the stop; past ``limit`` seconds it is cancelled and said loudly, and the stop goes on."""
        work = asyncio.ensure_future(stopping())
        self._steps[name] = (work, None)
        try:
            done, _ = await asyncio.wait({work}, timeout=limit)
            if not done:
                # Not awaited after the cancel: a step that ignores its cancellation must not hold the stop either.
                work.cancel()
                log.error("a step of the stop overran its time; abandoned", step=name, seconds=limit)
                return
            await work
        finally:
            self._steps.pop(name, None)

    def waiting_for(self) -> list[str]:
        steps = []
        for name, (task, detail) in list(self._steps.items()):
            more = [text for text in (detail() if detail else "", _where(task)) if text]
            steps.append(f"{name} ({'; '.join(more)})" if more else name)
        return steps

    def start_reporting(self, every: float | None = None) -> None:
        """From now until :meth:`stop_reporting`, log what the stop still waits for every ``every`` seconds."""
        self._reporter = asyncio.create_task(self._report(every or STILL_STOPPING_EVERY), name="still stopping")

    def stop_reporting(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()

    async def _report(self, every: float) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(every)
            if self._steps:
                log.warning(
                    "still stopping",
                    waiting_for=self.waiting_for(),
                    cancelled_but_running=_ignoring_cancellation(),
                    seconds=round(time.monotonic() - started),
                )


_ASYNCIO = str(Path(asyncio.__file__).parent)


def _where(task: asyncio.Task[Any] | None) -> str:
    """The innermost coroutine frame ``task`` waits in: what a stuck stop is stuck on."""
    if task is None or task.done():
        return ""
    coroutine: Any = task.get_coro()
    frame = None
    while coroutine is not None:
        inner = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if inner is not None and not inner.f_code.co_filename.startswith(_ASYNCIO):
            frame = inner  # asyncio's own frames (sleep, wait_for, gather) say nothing of what is awaited
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    if frame is None:
        return ""
    return f"waits in {frame.f_code.co_name} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}"


def _ignoring_cancellation() -> list[str]:
    """Tasks told to stop (cancelled) that still run, and where: what a stop waiting on them waits for."""
    return [
        f"{task.get_name()} ({_where(task) or 'running'})"
        for task in asyncio.all_tasks()
        if task.cancelling() and not task.done()
    ]


@dataclass
class _Loop:
    """One supervised loop: its task, and how it has fared since its last healthy run."""

    task: asyncio.Task[None]
    stopping: asyncio.Event
    started: float = 0.0  # monotonic time of its last (re)start
    deaths: int = 0  # deaths in a row, each soon after its restart


class Supervisor:
    """A service's long-lived loops, each restarted when it dies, and whether they are all working.

    A loop that raises, or returns while it is not told to stop, is logged at error and run again after a back-off
    (``first_delay`` doubling up to ``max_delay``, with jitter). After ``unready_after`` deaths in a row, each
    within ``healthy_after`` seconds of its restart, it is said at critical and :meth:`ready` is false until it
    has run ``healthy_after`` seconds since its last restart: a loop that dies once an hour is a fault to log,
    one that cannot run at all is a service that does not do its work.
    """

    def __init__(
        self,
        service: str,
        *,
        log: structlog.stdlib.BoundLogger | None = None,
        unready_after: int | None = None,
        healthy_after: float | None = None,
        first_delay: float | None = None,
        max_delay: float | None = None,
    ) -> None:
        self.service = service
        self.log = log or structlog.get_logger("skyport.runtime").bind(service=service)
        # The module's constants, read now rather than when this was defined, so that a test can make them short.
        self.unready_after = unready_after or LOOP_DEATHS_UNREADY
        self.healthy_after = healthy_after or LOOP_HEALTHY_AFTER
        self.first_delay = first_delay or LOOP_FIRST_DELAY
        self.max_delay = max_delay or LOOP_MAX_DELAY
        self._loops: dict[str, _Loop] = {}

    def supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``loop()`` until :meth:`stop`, again each time it dies; ``loop`` is called anew for every run."""
        if name in self._loops and not self._loops[name].task.done():
            raise ValueError(f"{self.service}: a loop named {name!r} already runs")
        stopping = asyncio.Event()
        task = asyncio.create_task(self._run(name, loop, stopping), name=f"{self.service}: {name}")
        self._loops[name] = _Loop(task, stopping, started=time.monotonic())
        return task

    def failing(self) -> list[str]:
        """The loops that keep dying: ``unready_after`` deaths in a row and no healthy run since."""
        now = time.monotonic()
        return [
            name
            for name, loop in self._loops.items()
            if not loop.task.done() and loop.deaths >= self.unready_after and now - loop.started < self.healthy_after
        ]

    async def ready(self) -> bool:
        """For readiness: false while a loop keeps dying."""
        return not self.failing()

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Stop the loops named (default: all of them) and wait until they have ended."""
        loops = list(self._loops.values()) if names is None else [self._loops[n] for n in names if n in self._loops]
        for loop in loops:
            # Set before the cancel: on Python 3.11, asyncio.wait_for can swallow a cancellation that arrives as
            # its inner wait completes (CPython gh-86296); the run ends on ``stopping`` all the same.
            loop.stopping.set()
            loop.task.cancel()
        await asyncio.gather(*(loop.task for loop in loops), return_exceptions=True)

    async def _run(self, name: str, loop: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            state = self._loops[name]
            state.started = time.monotonic()
            error: Exception | None = None
            try:
                await loop()
            except Exception as exc:
                error = exc
            if stopping.is_set():
                return  # told to stop (and maybe ended by what the stop closed under it): not a fault
            if time.monotonic() - state.started > self.healthy_after:
                state.deaths = 0  # it ran well for a while: this is a new fault, not the same one again
            state.deaths += 1
            delay = min(self.max_delay, self.first_delay * 2 ** min(state.deaths - 1, 16)) * random.uniform(0.8, 1.2)
            if error is None:
                self.log.error(
                    "loop ended by itself; restarting it", loop=name, deaths=state.deaths, retry_in=round(delay, 1)
                )
            else:
                self.log.error(
                    "loop died; restarting it", loop=name, deaths=state.deaths, retry_in=round(delay, 1), exc_info=error
                )
            if state.deaths == self.unready_after:
                self.log.critical("loop keeps dying; not ready", loop=name, deaths=state.deaths)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)


@dataclass(frozen=True)
class ServiceSpec(Generic[SettingsT]):
    """What the runtime needs to know to run a service; generic over its settings class, so its lifespan gets
    a :class:`ServiceContext` whose ``settings`` are of that class (no ``isinstance`` checks in lifespans)."""

    name: str
    settings_class: type[SettingsT]
    lifespan: Callable[[ServiceContext[SettingsT]], AbstractAsyncContextManager[None]]
    migrations: Path | None = None
    """The service's own migrations folder; the service gets a database (schema ``name``) when set."""
    uses_bus: bool = True
    """False for a service that never touches the broker (the monitor talks HTTP to the archive)."""

    def migrator(self) -> Migrator:
        streams = {"skyport": LIBRARY_MIGRATIONS}
        if self.migrations is not None:
            streams[self.name] = self.migrations
        return Migrator(self.name, streams)


@dataclass
class ServiceContext(Generic[SettingsT]):
    """The per-process resources of one service, handed to its lifespan."""

    name: str
    settings: SettingsT
    bus_or_none: Bus | None
    metrics: BusMetrics
    db: Database | None = None
    log: structlog.stdlib.BoundLogger = field(default_factory=lambda: structlog.get_logger("skyport"))
    readiness_checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    stop_hooks: list[Callable[[float], Awaitable[None]]] = field(default_factory=list)
    shutdown: ShutdownProgress = field(default_factory=ShutdownProgress)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.name, log=self.log)
        # Every service says whether its loops work, even one with none yet: readiness reads the same everywhere.
        self.readiness_checks["loops"] = self.supervisor.ready

    @property
    def bus(self) -> Bus:
        if self.bus_or_none is None:
            raise RuntimeError(f"service {self.name} is declared with uses_bus=False")
        return self.bus_or_none

    @property
    def database(self) -> Database:
        if self.db is None:
            raise RuntimeError(f"service {self.name} declares no migrations and so has no database")
        return self.db

    def on_stop(self, hook: Callable[[float], Awaitable[None]]) -> None:
        """Call ``hook(timeout)`` when the process is told to stop, beside the bus's own stop of consumers.

        For work that does not come from the bus (uploads, file watching): stop taking new work, and give
        what is in flight up to ``timeout`` seconds.
        """
        self.stop_hooks.append(hook)

    async def subscribe(self, subscription: Subscription) -> None:
        """Consume a queue; the subscription is labelled with this service in the metrics."""
        await self.bus.subscribe(replace(subscription, service=self.name))

    def supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run the long-lived loop ``loop()`` for the life of the service under its :class:`Supervisor`: restarted
        with back-off when it dies, and the service not ready while it keeps dying."""
        return self.supervisor.supervise(name, loop)

    @asynccontextmanager
    async def serve_http(self, app: web.Application, host: str, port: int, *, api: str) -> AsyncIterator[int]:
        """Serve ``app`` for the body of the block (yields the bound port); it stops before the pools close."""
        # aiohttp waits for every request in flight at stop, a WebSocket's included: close the WebSockets (1001,
        # going away) when it stops, so that a client left connected never holds the stop for shutdown_timeout.
        sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

        async def remember_socket(request: web.Request, response: web.StreamResponse) -> None:
            if isinstance(response, web.WebSocketResponse):
                sockets.add(response)

        async def close_sockets(app: web.Application) -> None:
            going_away = [ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping") for ws in list(sockets)]
            await asyncio.gather(*going_away, return_exceptions=True)

        app.on_response_prepare.append(remember_socket)
        app.on_shutdown.append(close_sockets)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = bound_port(site)
            self.log.info("HTTP API listening", api=api, host=host, port=bound)
            yield bound
        finally:
            # aiohttp gives requests in flight (WebSockets included) shutdown_timeout seconds to end.
            def connections() -> str:
                return f"{len(runner.server.connections) if runner.server else 0} connection(s) open"

            async with self.shutdown.step(f"{self.name}: {api} HTTP API", connections):
                await runner.cleanup()

    def start_outbox_relay(self) -> OutboxRelay:
        relay = OutboxRelay(self.database, self.bus, metrics=self.metrics, service=self.name)
        self.supervise("outbox relay", relay.run)
        return relay


def bound_port(site: web.TCPSite) -> int:
    """The port a site listens on: the one asked for, or the one the system chose for port 0."""
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


class HealthServer:
    """``/healthz`` (the process is alive), ``/readyz`` (broker and databases reachable), ``/metrics``."""

    def __init__(
        self,
        bus: Bus | None,
        databases: Sequence[Database],
        registry: CollectorRegistry,
        checks: dict[str, Callable[[], Awaitable[bool]]],
    ) -> None:
        self.bus = bus
        self.databases = databases
        self.checks = checks
        self.registry = registry
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        # A health check or a scrape is answered at once: nothing here is worth waiting for at stop.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = bound_port(site)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = {} if self.bus is None else {"bus": await self.bus.ping()}
        for db in self.databases:
            checks[f"database:{db.schema}"] = await db.ping()
        for name, check in self.checks.items():
            checks[name] = await check()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def migrate(spec: ServiceSpec[Any], settings: CommonSettings) -> list[str]:
    """Apply the spec's pending migrations; returns what was applied."""
    db = await Database.connect(settings.database_url, spec.name, min_size=1, max_size=1)
    try:
        async with db.session() as conn:  # the migrator's session lock
            return [str(m) for m in await spec.migrator().apply(conn)]
    finally:
        await db.close()


async def run_services(
    specs: Sequence[ServiceSpec[Any]],
    *,
    stop: asyncio.Event | None = None,
    settings: Mapping[str, CommonSettings] | None = None,
    common: CommonSettings | None = None,
) -> None:
    """Run ``specs`` in this process until SIGTERM/SIGINT (or ``stop`` is set), then shut down in order.

    ``settings`` gives a service its settings by name, and ``common`` the process's own (bus, logging, health
    server, shutdown timeout): a composition such as the demo or a test passes them in and leaves the environment
    alone. What is not passed in is read from the environment, every service's before anything is opened, and a
    setting that is missing or wrong stops the start with :class:`~skyport.settings.SettingsError` naming its
    variable.
    """
    if not specs:
        raise ValueError("no service to run")
    common = common or load_settings(CommonSettings)
    chosen = _settings_of(specs, settings or {})
    configure_logging(common.log_format, common.log_level)
    configure_schema_base(common.schema_base_uri)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await _run(specs, common, stop, chosen)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def _settings_of(specs: Sequence[ServiceSpec[Any]], given: Mapping[str, CommonSettings]) -> dict[str, CommonSettings]:
    """Each service's settings, given or read from the environment; every problem of every service in one error."""
    chosen: dict[str, CommonSettings] = {}
    problems: list[str] = []
    for spec in specs:
        try:
            chosen[spec.name] = given.get(spec.name) or load_settings(spec.settings_class)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return chosen


async def _run(
    specs: Sequence[ServiceSpec[Any]],
    common: CommonSettings,
    stop: asyncio.Event,
    chosen: Mapping[str, CommonSettings],
) -> None:
    names = [spec.name for spec in specs]
    registry = CollectorRegistry()
    metrics = BusMetrics(registry)
    bus_service = names[0] if len(names) == 1 else "skyport"
    shutdown = ShutdownProgress()
    async with AsyncExitStack() as stack:
        stack.callback(shutdown.stop_reporting)  # the last thing the stop does
        bus: Bus | None = None
        if any(spec.uses_bus for spec in specs):
            bus = create_bus(
                common.bus_url, metrics=metrics, service=bus_service, publish_timeout=common.publish_timeout
            )
            await bus.start()
            stack.push_async_callback(shutdown.run, "bus: connection", bus.close)
        databases: list[Database] = []
        contexts: list[ServiceContext[Any]] = []
        for spec in specs:
            settings = chosen[spec.name]
            ctx = ServiceContext(
                spec.name,
                settings,
                bus if spec.uses_bus else None,
                metrics,
                log=structlog.get_logger("skyport").bind(service=spec.name),
                shutdown=shutdown,
            )
            contexts.append(ctx)
            if spec.migrations is not None:
                ctx.db = await _open_database(spec, settings)
                stack.push_async_callback(shutdown.run, f"{spec.name}: database pool", ctx.db.close)
                databases.append(ctx.db)
            stack.push_async_callback(shutdown.run, f"{spec.name}: supervised loops", ctx.supervisor.stop)
            if ctx.db is not None:
                ctx.supervise("forget old event ids", functools.partial(_forget_old_events, ctx.db))
            await _enter_lifespan(stack, shutdown, spec.name, spec.lifespan(ctx))
            log.info("service started", service=spec.name)
        checks = {f"{ctx.name}:{name}": check for ctx in contexts for name, check in ctx.readiness_checks.items()}
        health = HealthServer(bus, databases, registry, checks)
        await health.start(common.health_host, common.health_port)
        stack.push_async_callback(shutdown.run, "health server", health.stop)
        log.info("ready", services=names, health_port=health.port)
        await stop.wait()
        log.info("shutting down", services=names, timeout=common.shutdown_timeout)
        shutdown.start_reporting()
        timeout = common.shutdown_timeout
        # Each is given `timeout` for its work in flight; one that takes much longer (a loop that ignores its
        # cancellation) is abandoned rather than holding the process for ever.
        limit = timeout + STOP_GRACE
        stopping = [
            shutdown.run(f"{ctx.name}: {_name_of(hook)}", functools.partial(hook, timeout), limit=limit)
            for ctx in contexts
            for hook in ctx.stop_hooks
        ]
        if bus is not None:
            stopping.append(
                shutdown.run("bus: handlers in flight", functools.partial(bus.stop_consuming, timeout), limit=limit)
            )
        await asyncio.gather(*(asyncio.create_task(step) for step in stopping))
    log.info("stopped", services=names)


def _name_of(hook: Callable[..., Any]) -> str:
    return str(getattr(hook, "__qualname__", "stop hook")).rsplit(".<locals>.", 1)[-1]


async def _enter_lifespan(
    stack: AsyncExitStack, shutdown: ShutdownProgress, name: str, lifespan: AbstractAsyncContextManager[None]
) -> None:
    """Enter a service's lifespan; its exit, at stop, is a step of the shutdown that is reported while it waits."""
    await lifespan.__aenter__()

    async def leave(*exc_info: Any) -> bool | None:
        async with shutdown.step(f"{name}: lifespan"):
            return await lifespan.__aexit__(*exc_info)

    stack.push_async_exit(leave)


async def _forget_old_events(db: Database) -> None:
    """Hourly, forget handled event ids older than any redelivery can be (the table would grow forever)."""
    while True:
        try:
            async with db.transaction() as conn:
                await forget_processed_events(conn, EVENT_ID_RETENTION)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not forget old event ids", schema=db.schema, error=repr(exc))
        await asyncio.sleep(3600)


async def _open_database(spec: ServiceSpec[Any], settings: CommonSettings) -> Database:
    db = await Database.connect(settings.database_url, spec.name)
    try:
        async with db.session() as conn:  # the migrator's session lock
            migrator = spec.migrator()
            if settings.migrate_on_start:
                await migrator.apply(conn)
            else:
                await migrator.check(conn)
    except BaseException:
        await db.close()
        raise
    return db


def run_service(spec: ServiceSpec[Any]) -> None:
    """A service's ``python -m <package>`` entry point: run it alone in this process.

    A server it cannot reach at start ends the process with one line that says which and where, no traceback.
    """
    try:
        asyncio.run(run_services([spec]))
    except (Unreachable, SettingsError) as exc:
        raise SystemExit(f"{spec.name}: {exc}") from None
