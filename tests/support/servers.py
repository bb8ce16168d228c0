"""Make sure the local RabbitMQ and PostgreSQL are up, starting them the distribution's way when they are not."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import time

AMQP_URL = os.environ.get("SKYPORT_TEST_BUS_URL", "amqp://guest:guest@localhost:5672/")
DATABASE_URL = os.environ.get("SKYPORT_TEST_DATABASE_URL", "postgresql://postgres@localhost:5432/test")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(port: int, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} is not listening on port {port} after {seconds:.0f}s")


def ensure_rabbitmq() -> None:
    if not _port_open(5672):
        # Every quorum queue keeps files open: give the broker all the descriptors it may have, not the soft 1024.
        subprocess.run(["bash", "-c", 'ulimit -n "$(ulimit -Hn)"; exec rabbitmq-server -detached'], check=False)
        _wait_for(5672, "RabbitMQ", 90)


def ensure_postgresql() -> None:
    if not _port_open(5432):
        for version in sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        if not glob.glob("/etc/postgresql/*"):
            raise RuntimeError("PostgreSQL is not running and no cluster is configured in /etc/postgresql")
        _wait_for(5432, "PostgreSQL", 60)
