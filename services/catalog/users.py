"""Users and their API tokens: who am I, a user's own tokens, and the administration of users and tokens.

Tokens are shown once, when issued; the catalog keeps only their sha256 (:mod:`services.catalog.storage.users`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import structlog

from services.catalog.access import Viewer, programs_visible_to, require_user
from services.catalog.errors import UnknownUser
from services.catalog.storage.programs import Membership
from services.catalog.storage.users import TokenInfo, User, UserStore, token_id_of

log = structlog.get_logger("skyport.catalog.users")


@dataclass(frozen=True)
class Me:
    """A user's own account: their details, the programs whose data they see, their active tokens."""

    user: User
    programs: list[Membership]
    tokens: list[TokenInfo]


@dataclass(frozen=True)
class IssuedToken:
    token: str
    """The token itself, shown this once."""
    info: TokenInfo


async def me(conn: asyncpg.Connection, viewer: Viewer) -> Me:
    """The signed-in viewer's account (:class:`NotSignedIn` for an anonymous one)."""
    require_user(viewer)
    assert viewer.username is not None
    assert viewer.user_id is not None
    user = await UserStore(conn).by_username(viewer.username)
    assert user is not None  # the token was just found with its user
    return Me(user, await programs_visible_to(conn, viewer), await UserStore(conn).active_tokens(viewer.user_id))


async def issue_own_token(conn: asyncpg.Connection, viewer: Viewer, label: str = "") -> IssuedToken:
    """A new token for the signed-in viewer."""
    require_user(viewer)
    assert viewer.user_id is not None
    users = UserStore(conn)
    token = await users.issue_token(viewer.user_id, label)
    info = await users.token_info(viewer.user_id, token_id_of(token))
    assert info is not None  # just issued, in this transaction
    log.info("token issued", token_id=info.token_id, label=label)
    return IssuedToken(token, info)


async def revoke_own_token(conn: asyncpg.Connection, viewer: Viewer, token_id: str) -> bool:
    """Revoke one of the viewer's own tokens by its id; False when they have no such active token."""
    require_user(viewer)
    assert viewer.user_id is not None
    revoked = await UserStore(conn).revoke_token_of(viewer.user_id, token_id)
    if revoked:
        log.info("token revoked", token_id=token_id)
    return revoked


# --- administration (the operator's commands: no viewer, the operator may do anything) --------------------


async def add_user(
    conn: asyncpg.Connection,
    username: str,
    *,
    email: str | None = None,
    display_name: str | None = None,
    is_admin: bool = False,
) -> User:
    """Create a user, or update the details given; ``is_admin`` promotes, never demotes."""
    return await UserStore(conn).add(username, email=email, display_name=display_name, is_admin=is_admin)


async def issue_token(conn: asyncpg.Connection, username: str, *, label: str = "") -> str:
    """A new token for the user; the only time it is ever shown."""
    users = UserStore(conn)
    user = await users.by_username(username)
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    return await users.issue_token(user.user_id, label)


async def revoke_token(conn: asyncpg.Connection, token: str) -> bool:
    """Revoke one token, given in full; False when it is unknown or revoked already."""
    return await UserStore(conn).revoke_token(token)


async def revoke_tokens_of(conn: asyncpg.Connection, username: str, *, label: str | None = None) -> int:
    """Revoke a user's tokens (all, or those with ``label``); returns how many."""
    users = UserStore(conn)
    user = await users.by_username(username)
    if user is None:
        raise UnknownUser(f"no user {username!r}")
    return await users.revoke_tokens_of(user.user_id, label)
