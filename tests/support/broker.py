"""Test access to the broker's side: closing a client's connections as an outage would."""

from __future__ import annotations

import asyncio


async def _rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")
    return out.decode()


async def close_connections_named(name: str) -> int:
    """Have RabbitMQ close every connection whose client calls itself ``name``; returns how many."""
    listing = await _rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    closed = 0
    for line in listing.splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            await _rabbitmqctl("close_connection", pid, "closed by a Skyport test")
            closed += 1
    return closed
