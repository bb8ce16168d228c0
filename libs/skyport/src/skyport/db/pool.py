"""An asyncpg pool bound to one service's schema, and the embedded PostgreSQL for the demo."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from skyport.errors import Unreachable, connect_reason

# Long enough for a loaded server, short enough that a wrong address fails the start in seconds, not minutes.
CONNECT_TIMEOUT = 15.0
# pgserver's pg_ctl waits 10 s for the embedded PostgreSQL each time.
EMBEDDED_START_ATTEMPTS = 3
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_embedded_servers: dict[Path, Any] = {}


def check_identifier(name: str) -> str:
    """A schema name safe to splice into SQL (PostgreSQL cannot take schema names as parameters)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid schema name (lower-case letters, digits and '_')")
    return name


async def resolve_database_url(url: str) -> str:
    """The URL to connect to: ``embedded:///folder`` starts (once per process) a PostgreSQL kept there."""
    parts = urlsplit(url)
    if parts.scheme != "embedded":
        return url
    folder = Path(parts.path)
    if folder not in _embedded_servers:
        _embedded_servers[folder] = await _start_embedded(folder)
    uri: str = _embedded_servers[folder].get_uri()
    return uri


async def _start_embedded(folder: Path) -> Any:
    """Start (or find running) the embedded PostgreSQL kept in ``folder``."""
    from pgserver import get_server  # type: ignore[attr-defined]  # the optional 'embedded' extra: PostgreSQL binaries in a wheel

    # pgserver gives pg_ctl 10 s to see PostgreSQL up, too little on a loaded machine though the server does come up:
    # asked again, it finds it running. Its own error prints the whole server log; ours is one line naming the log.
    pgserver_log = logging.getLogger("pgserver")
    level = pgserver_log.level
    pgserver_log.setLevel(logging.CRITICAL)
    try:
        for _ in range(EMBEDDED_START_ATTEMPTS):
            try:
                # pgserver creates the folder and starts postgres with blocking calls; keep the loop free meanwhile.
                return await asyncio.to_thread(get_server, folder, cleanup_mode="stop")
            except subprocess.TimeoutExpired:
                continue
            except (subprocess.CalledProcessError, OSError) as exc:
                raise Unreachable(
                    "the embedded PostgreSQL", f"embedded://{folder}", "it did not start", f"see {folder / 'log'}"
                ) from exc
    finally:
        pgserver_log.setLevel(level)
    raise Unreachable(
        "the embedded PostgreSQL",
        f"embedded://{folder}",
        f"it did not start after {EMBEDDED_START_ATTEMPTS} tries",
        f"is the machine overloaded? see {folder / 'log'}",
    )


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no types
    """A pool's connection that is given back as it is, unless its holder changed its session.

    asyncpg resets every connection it takes back (advisory locks, cursors, LISTEN, settings: one more round trip
    with four statements, about a fifth of the receiver's queries per file). Skyport's statements change nothing of
    the session: their locks are transaction locks and their settings ``SET LOCAL``, and an open transaction is
    rolled back on release whatever this says. The few holders that take session locks or listen (migrations, the
    outbox relay's leader) borrow through :meth:`Database.session`, which asks for the full reset.
    """

    _session_changed = False

    def session_changed(self) -> None:
        """Reset this connection in full when it goes back to the pool."""
        self._session_changed = True

    def get_reset_query(self) -> str:
        if not self._session_changed:
            return ""
        self._session_changed = False
        return str(super().get_reset_query())


class Database:
    """A connection pool whose connections see ``schema`` first on their search path."""

    def __init__(self, pool: asyncpg.Pool, url: str, schema: str) -> None:
        self.pool = pool
        self.url = url
        self.schema = schema

    @classmethod
    async def connect(cls, url: str, schema: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        real_url = await resolve_database_url(url)
        check_identifier(schema)
        try:
            pool = await asyncpg.create_pool(
                real_url,
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT,
                connection_class=PooledConnection,
                server_settings={"search_path": f"{schema}, public", "application_name": f"skyport-{schema}"},
            )
        except (OSError, TimeoutError) as exc:
            raise Unreachable(
                "PostgreSQL",
                real_url,
                connect_reason(exc, CONNECT_TIMEOUT),
                "is PostgreSQL running there, and is SKYPORT_DATABASE_URL right?",
            ) from exc
        except asyncpg.InvalidPasswordError as exc:
            raise Unreachable("PostgreSQL", real_url, str(exc), "check the password in SKYPORT_DATABASE_URL") from exc
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
            raise Unreachable(
                "PostgreSQL", real_url, str(exc), "check the user and database in SKYPORT_DATABASE_URL"
            ) from exc
        assert pool is not None
        return cls(pool, real_url, schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction that commits when the block ends without an exception."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection whose session its holder may change (session advisory locks, LISTEN, SET): it is reset
        in full when it goes back to the pool."""
        async with self.pool.acquire() as conn:
            try:
                yield conn
            finally:
                conn.session_changed()

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        await self.pool.close()
