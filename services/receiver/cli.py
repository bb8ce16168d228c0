"""``skyport receiver ...``: register observatory sites, issue, rotate and remove their credentials."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.receiver.storage import SiteStore
from skyport.db import Database
from skyport.settings import CommonSettings


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("receiver", help="receiver administration: observatory sites and credentials")
    sub = parser.add_subparsers(dest="receiver_command", required=True)
    add = sub.add_parser("add-site", help="register a site, or give it a new credential; prints the token once")
    add.add_argument("name", help="the site's name, e.g. keck")
    add.set_defaults(func=_add_site)
    rotate = sub.add_parser(
        "rotate-site", help="give a site a new credential, refusing the old one at once; prints the new token once"
    )
    rotate.add_argument("name", help="the site's name")
    rotate.set_defaults(func=_rotate_site)
    remove = sub.add_parser("remove-site", help="take a site's credential away at once (its transfers stay on record)")
    remove.add_argument("name", help="the site's name")
    remove.set_defaults(func=_remove_site)


def _add_site(args: argparse.Namespace) -> int:
    print(_with_sites(lambda sites: sites.add(args.name)))
    return 0


def _rotate_site(args: argparse.Namespace) -> int:
    token = _with_sites(lambda sites: sites.rotate(args.name))
    if token is None:
        print(f"no site named {args.name!r}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _remove_site(args: argparse.Namespace) -> int:
    if not _with_sites(lambda sites: sites.remove(args.name)):
        print(f"no site named {args.name!r}", file=sys.stderr)
        return 1
    print(f"site {args.name!r} removed: its credential is refused from now on")
    return 0


T = TypeVar("T")


def _with_sites(change: Callable[[SiteStore], Awaitable[T]]) -> T:
    """Run ``change`` on the receiver's sites in one transaction."""
    settings = CommonSettings()

    async def main() -> T:
        db = await Database.connect(settings.database_url, "receiver", max_size=1)
        try:
            async with db.transaction() as conn:
                return await change(SiteStore(conn))
        finally:
            await db.close()

    return asyncio.run(main())
