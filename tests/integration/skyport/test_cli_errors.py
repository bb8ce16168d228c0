"""A server the ``skyport`` command cannot reach is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.servers import AMQP_URL, DATABASE_URL


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on: bound (so no one else takes it) but never listening, so connects are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def skyport(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKYPORT_LOG_FORMAT": "json", **environment}
    return subprocess.run(
        [sys.executable, "-m", "skyport", *args], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def assert_one_line(result: subprocess.CompletedProcess[str], what: str, where: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert what in lines[0]
    assert where in lines[0]
    assert "secret" not in lines[0]  # the password is never printed
    assert "Traceback" not in result.stderr


def test_migrate_with_the_database_down_says_so_in_one_line(closed_port: int) -> None:
    result = skyport("migrate", SKYPORT_DATABASE_URL=f"postgresql://postgres:secret@127.0.0.1:{closed_port}/skyport")

    assert_one_line(result, "PostgreSQL", f"127.0.0.1:{closed_port}")
    assert "SKYPORT_DATABASE_URL" in result.stderr  # what to check
    assert "connection refused" in result.stderr


@pytest.mark.parametrize("command", [["run", "catalog"], ["dlq", "list"]], ids=["run", "dlq"])
def test_the_broker_down_is_said_in_one_line(command: list[str], closed_port: int) -> None:
    result = skyport(
        *command,
        SKYPORT_BUS_URL=f"amqp://guest:secret@127.0.0.1:{closed_port}/",
        SKYPORT_DATABASE_URL=DATABASE_URL,
        SKYPORT_HEALTH_PORT="0",
    )

    assert_one_line(result, "RabbitMQ", f"127.0.0.1:{closed_port}")
    assert "SKYPORT_BUS_URL" in result.stderr


def test_a_refused_broker_login_is_said_in_one_line() -> None:
    host = AMQP_URL.split("@", 1)[1]

    result = skyport("dlq", "list", SKYPORT_BUS_URL=f"amqp://guest:secret@{host}")

    assert_one_line(result, "RabbitMQ", host.rstrip("/"))
    assert "ACCESS_REFUSED" in result.stderr


@pytest.mark.parametrize(
    ("service", "variable"),
    [("gateway", "SKYPORT_GATEWAY_CATALOG_TOKEN"), ("monitor", "SKYPORT_SITE_TOKEN")],
)
def test_a_missing_required_setting_is_said_in_one_line_before_anything_is_opened(
    service: str, variable: str, closed_port: int
) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in (variable, "SKYPORT_RECEIVER_URL")}
    env = {
        **environment,
        "SKYPORT_LOG_FORMAT": "json",
        # Were the settings read after the broker was opened, this would be the line instead.
        "SKYPORT_BUS_URL": f"amqp://guest:secret@127.0.0.1:{closed_port}/",
        "SKYPORT_HEALTH_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "skyport", "run", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert_one_line(result, variable, "Field required")
    assert "RabbitMQ" not in result.stderr
