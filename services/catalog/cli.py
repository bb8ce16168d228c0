"""``skyport catalog ...``: bootstrap and administer a catalog without SQL (programs, users, tokens, members).

Each command is an ``async`` function on a :class:`~skyport.db.Database` (what the tests call) behind a thin
argparse adapter: it checks the operator's words, opens the transaction and calls the same service functions
as the HTTP API (:mod:`.programs`, :mod:`.users`, :mod:`.membership`), as an administrator. Membership
changes made here are announced (``access.changed``) like the PI's own, by the running catalog's outbox relay.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.catalog import programs, users
from services.catalog.access import ROLES, Role
from services.catalog.errors import MembershipRefused, NotAllowed, UnknownProgram, UnknownUser
from services.catalog.membership import MembershipChange, grant, revoke
from services.catalog.storage.programs import Program, ProgramSummary
from services.catalog.storage.users import User
from skyport.commands import CommandError, reported, with_database
from skyport.db import Database

SCHEMA = "catalog"
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,127}$")
_MISSION = re.compile(r"^[A-Za-z0-9_\-]+$")

T = TypeVar("T")


def check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise CommandError(
            f"{username!r} is not a valid username: lower-case letters, digits and . _ @ + - (at most 128)"
        )
    return username


def check_program(mission: str, propid: str) -> tuple[str, str]:
    if not _MISSION.match(mission) or not _MISSION.match(propid):
        raise CommandError(f"{mission}/{propid} is not a valid program: letters, digits, '_' and '-' only")
    return mission.upper(), propid


# --- the commands, as functions --------------------------------------------------------------------------


async def add_program(
    db: Database,
    mission: str,
    propid: str,
    *,
    title: str | None = None,
    exclusive_access_months: int | None = None,
    pi: str | None = None,
) -> Program:
    """Create a program (or update its title and period) and, with ``pi``, name its PI."""
    mission, propid = check_program(mission, propid)
    if pi is not None:
        check_username(pi)
    async with db.transaction() as conn:
        return await programs.add_program(
            conn, mission, propid, title=title, exclusive_access_months=exclusive_access_months, pi=pi
        )


async def add_user(
    db: Database, username: str, *, email: str | None = None, display_name: str | None = None, admin: bool = False
) -> User:
    username = check_username(username)
    async with db.transaction() as conn:
        return await users.add_user(conn, username, email=email, display_name=display_name, is_admin=admin)


async def issue_token(db: Database, username: str, *, label: str = "") -> str:
    """A new token for the user; the only time it is ever shown."""
    async with db.transaction() as conn:
        return await users.issue_token(conn, username, label=label)


async def revoke_token(
    db: Database, *, token: str | None = None, username: str | None = None, label: str | None = None
) -> int:
    """Revoke one token (given in full), or a user's tokens (all, or those with ``label``); returns how many."""
    if token is None and username is None:
        raise CommandError("name the token, or the user whose tokens to revoke (--user)")
    async with db.transaction() as conn:
        if token is not None:
            return 1 if await users.revoke_token(conn, token) else 0
        assert username is not None
        return await users.revoke_tokens_of(conn, username, label=label)


async def grant_role(
    db: Database, mission: str, propid: str, username: str, role: Role = "collaborator"
) -> MembershipChange | None:
    mission, propid = check_program(mission, propid)
    async with db.transaction() as conn:
        return await grant(conn, None, mission, propid, username, role)


async def revoke_role(db: Database, mission: str, propid: str, username: str) -> MembershipChange | None:
    mission, propid = check_program(mission, propid)
    async with db.transaction() as conn:
        return await revoke(conn, None, mission, propid, username)


async def list_programs(db: Database) -> list[ProgramSummary]:
    async with db.pool.acquire() as conn:
        return await programs.summaries(conn)


# --- the command line ------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("catalog", help="catalog administration: programs, users, tokens and program members")
    sub = parser.add_subparsers(dest="catalog_command", required=True)

    program = sub.add_parser("add-program", help="create a program, or update its title and exclusive-access period")
    program.add_argument("mission", help="e.g. KECK")
    program.add_argument("propid", help="e.g. 2026A_U123")
    program.add_argument("--title", help="the program's title, shown to its members")
    program.add_argument(
        "--exclusive-access-months",
        type=int,
        help="the program's own proprietary period, counted from each observation's UT date "
        "(default: each file's release date, from the mission's rule)",
    )
    program.add_argument("--pi", metavar="USERNAME", help="name the program's PI (an existing user)")
    program.set_defaults(func=_add_program)

    user = sub.add_parser("add-user", help="create a user, or update their details")
    user.add_argument("username", help="lower-case, e.g. alice or alice@example.org")
    user.add_argument("--email", help="where the user is told of their data")
    user.add_argument("--name", help="display name")
    user.add_argument(
        "--admin", action="store_true", help="an administrator sees and may change everything (never undone here)"
    )
    user.set_defaults(func=_add_user)

    issue = sub.add_parser("issue-token", help="issue an API token for a user; it is printed once, never stored")
    issue.add_argument("username", help="the user the token signs in as")
    issue.add_argument("--label", default="", help="what the token is for, e.g. laptop")
    issue.set_defaults(func=_issue_token)

    revoke_parser = sub.add_parser("revoke-token", help="revoke a token, or a user's tokens")
    revoke_parser.add_argument("token", nargs="?", help="the token itself")
    revoke_parser.add_argument("--user", help="revoke this user's tokens instead (all, or those with --label)")
    revoke_parser.add_argument("--label", help="with --user: only the tokens with this label")
    revoke_parser.set_defaults(func=_revoke_token)

    grant_parser = sub.add_parser("grant", help="make a user a member of a program (announced as access.changed)")
    grant_parser.add_argument("mission", help="e.g. KECK")
    grant_parser.add_argument("propid", help="e.g. 2026A_U123")
    grant_parser.add_argument("username", help="an existing user")
    grant_parser.add_argument("--role", choices=ROLES, default="collaborator", help="(default: collaborator)")
    grant_parser.set_defaults(func=_grant)

    remove = sub.add_parser("revoke", help="remove a user from a program; they lose access at once")
    remove.add_argument("mission", help="e.g. KECK")
    remove.add_argument("propid", help="e.g. 2026A_U123")
    remove.add_argument("username", help="a member of the program")
    remove.set_defaults(func=_revoke)

    listing = sub.add_parser("list-programs", help="programs with their PI, members and products")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(func=_list_programs)


def _run(command: Callable[[Database], Awaitable[T]]) -> T:
    return with_database(SCHEMA, command)


_reported = reported("catalog", SCHEMA, UnknownUser, UnknownProgram, MembershipRefused, NotAllowed)


@_reported
def _add_program(args: argparse.Namespace) -> int:
    program = _run(
        lambda db: add_program(
            db,
            args.mission,
            args.propid,
            title=args.title,
            exclusive_access_months=args.exclusive_access_months,
            pi=args.pi,
        )
    )
    print(f"{program.mission}/{program.propid}" + (f" (PI {args.pi})" if args.pi else ""))
    return 0


@_reported
def _add_user(args: argparse.Namespace) -> int:
    user = _run(lambda db: add_user(db, args.username, email=args.email, display_name=args.name, admin=args.admin))
    print(user.username + (" (administrator)" if user.is_admin else ""))
    return 0


@_reported
def _issue_token(args: argparse.Namespace) -> int:
    print(_run(lambda db: issue_token(db, args.username, label=args.label)))
    return 0


@_reported
def _revoke_token(args: argparse.Namespace) -> int:
    if (args.token is None) == (args.user is None):
        raise CommandError("give either a token or --user")
    count = _run(lambda db: revoke_token(db, token=args.token, username=args.user, label=args.label))
    print(f"{count} token(s) revoked")
    return 0 if count else 1


@_reported
def _grant(args: argparse.Namespace) -> int:
    change = _run(lambda db: grant_role(db, args.mission, args.propid, args.username, args.role))
    print(f"{args.username} is {args.role} of {args.mission.upper()}/{args.propid}" + ("" if change else " already"))
    return 0


@_reported
def _revoke(args: argparse.Namespace) -> int:
    change = _run(lambda db: revoke_role(db, args.mission, args.propid, args.username))
    where = f"{args.mission.upper()}/{args.propid}"
    print(f"{args.username} removed from {where}" if change else f"{args.username} was not a member of {where}")
    return 0


@_reported
def _list_programs(args: argparse.Namespace) -> int:
    summaries = _run(list_programs)
    if args.json:
        document = [
            {
                "mission": s.program.mission,
                "propid": s.program.propid,
                "title": s.program.title,
                "pi": s.pi,
                "members": s.members,
                "products": s.products,
                "exclusive_access_months": s.program.exclusive_access_months,
                "first_data_at": s.program.first_data_at.isoformat() if s.program.first_data_at else None,
            }
            for s in summaries
        ]
        print(json.dumps(document, indent=2))
        return 0
    for s in summaries:
        print(
            f"{s.program.mission}/{s.program.propid}  PI={s.pi or '-'}  members={s.members}  products={s.products}"
            + (f"  {s.program.title}" if s.program.title else "")
        )
    print(f"{len(summaries)} program(s)")
    return 0
