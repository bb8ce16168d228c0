"""What the services' operator commands share: one database connection for a command, and mistakes said in one
line on stderr with exit status 1 (never a traceback for something the operator can fix)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from skyport.db import Database
from skyport.settings import CommonSettings

T = TypeVar("T")
Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A mistake an operator can fix, reported in one line."""


def with_database(
    schema: str, command: Callable[[Database], Awaitable[T]], settings: CommonSettings | None = None
) -> T:
    """Run ``command`` on a one-connection pool of ``schema`` (from ``settings``, by default the environment's)."""
    database_url = (settings or CommonSettings()).database_url

    async def main() -> T:
        db = await Database.connect(database_url, schema, min_size=1, max_size=1)
        try:
            return await command(db)
        finally:
            await db.close()

    return asyncio.run(main())


def reported(program: str, schema: str, *refusals: type[Exception]) -> Callable[[Command], Command]:
    """A decorator for ``skyport <program> ...`` commands: a :class:`CommandError` or one of ``refusals`` is printed
    as ``skyport <program>: <reason>``, and a schema not migrated yet says which command makes it; both exit 1."""

    caught: tuple[type[Exception], ...] = (CommandError, *refusals)

    def decorate(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except caught as exc:
                print(f"skyport {program}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
                return 1
            except asyncpg.UndefinedTableError:
                print(
                    f"skyport {program}: the {schema} schema is missing: run `skyport migrate {schema}`",
                    file=sys.stderr,
                )
                return 1

        return run

    return decorate
