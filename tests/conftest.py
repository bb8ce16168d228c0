"""Fixtures shared by every tier: unique names, so tests never see each other's data, and cleaning up after them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.support.flow import Flow
from tests.support.servers import AMQP_URL

_tokens: set[str] = set()


@pytest.fixture
def unique() -> str:
    """A short random token to make queue, program and schema names unique to one test."""
    token = uuid.uuid4().hex[:10]
    _tokens.add(token)
    return token


@pytest.fixture(scope="session", autouse=True)
def _delete_test_queues(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete the durable queues the tests declared on the shared broker (their names carry a unique token).

    Quorum queues hold files open on the broker: left behind run after run, they exhaust its descriptors.
    """
    yield
    if not _tokens or not _touched_servers(request.session):
        return  # the unit tier runs with no servers at all
    try:
        listing = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return  # no broker to clean: nothing of ours can be on it
    names = [line.split("\t")[0] for line in listing.stdout.splitlines() if any(t in line for t in _tokens)]
    if names:
        asyncio.run(_delete_queues(names))


def _touched_servers(session: pytest.Session) -> bool:
    """Whether any test of this run is outside the unit tier (only those talk to the real broker)."""
    unit = Path(__file__).parent / "unit"
    return any(not Path(item.path).is_relative_to(unit) for item in session.items)


async def _delete_queues(names: list[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for name in names:
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                await channel.queue_delete(name)
                await channel.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test that ran services shows what they logged last (their processes write to a pipe, not a file)."""
    report: pytest.TestReport = yield
    if report.failed and call.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Flow) and value.processes:
                report.sections.append(("services' last log lines", value.log_tail()))
    return report
