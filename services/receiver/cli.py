"""``skyport receiver ...``: register observatory sites and issue their credentials."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from services.receiver.storage import SiteStore
from skyport.db import Database
from skyport.settings import CommonSettings


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("receiver", help="receiver administration: observatory sites and credentials")
    sub = parser.add_subparsers(dest="receiver_command", required=True)
    add = sub.add_parser("add-site", help="register a site, or give it a new credential; prints the token once")
    add.add_argument("name", help="the site's name, e.g. keck")
    add.set_defaults(func=_add_site)


def _add_site(args: argparse.Namespace) -> int:
    settings = CommonSettings()

    async def main() -> str:
        db = await Database.connect(settings.database_url, "receiver", max_size=1)
        try:
            async with db.transaction() as conn:
                return await SiteStore(conn).add(args.name)
        finally:
            await db.close()

    token = asyncio.run(main())
    print(token)
    return 0
