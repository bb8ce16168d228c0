"""The users and api_tokens tables: people, and the hashes of their bearer tokens.

Store classes take a connection inside the caller's transaction and never commit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from skyport.http import hash_token

TOKEN_ID_LENGTH = 16
"""A token's id is this many leading hex digits of its sha256: it names the token and cannot be used as one."""


def token_id_of(token: str) -> str:
    return hash_token(token)[:TOKEN_ID_LENGTH]


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    email: str | None
    display_name: str | None
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    """An API token as its owner sees it: its id and label, never the token."""

    token_id: str
    label: str
    created_at: datetime


_TOKEN_INFO = f"SELECT left(token_sha256, {TOKEN_ID_LENGTH}) AS token_id, label, created_at FROM api_tokens "


class UserStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(
        self, username: str, *, email: str | None = None, display_name: str | None = None, is_admin: bool = False
    ) -> User:
        """Create a user, or update the details given of the one with this username.

        ``is_admin`` makes an existing user an administrator; it never demotes one.
        """
        row = await self.conn.fetchrow(
            "INSERT INTO users (username, email, display_name, is_admin) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (username) DO UPDATE SET email = coalesce(EXCLUDED.email, users.email), "
            "display_name = coalesce(EXCLUDED.display_name, users.display_name), "
            "is_admin = users.is_admin OR EXCLUDED.is_admin "
            "RETURNING *",
            username,
            email,
            display_name,
            is_admin,
        )
        return User(**dict(row))

    async def by_username(self, username: str) -> User | None:
        row = await self.conn.fetchrow("SELECT * FROM users WHERE username = $1", username)
        return None if row is None else User(**dict(row))

    async def issue_token(self, user_id: int, label: str = "") -> str:
        """A new bearer token for the user; returns it (it is not stored, only its sha256 is)."""
        token = secrets.token_urlsafe(32)
        await self.conn.execute(
            "INSERT INTO api_tokens (token_sha256, user_id, label) VALUES ($1, $2, $3)",
            hash_token(token),
            user_id,
            label,
        )
        return token

    async def user_for_token(self, token: str) -> User | None:
        """The user a token belongs to, or None if it is unknown or revoked."""
        row = await self.conn.fetchrow(
            "SELECT u.* FROM api_tokens t JOIN users u USING (user_id) "
            "WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL",
            hash_token(token),
        )
        return None if row is None else User(**dict(row))

    async def revoke_token(self, token: str) -> bool:
        """Revoke one token (given in full); False if it is unknown or revoked already."""
        result: str = await self.conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_sha256 = $1 AND revoked_at IS NULL", hash_token(token)
        )
        return result.endswith(" 1")

    async def revoke_tokens_of(self, user_id: int, label: str | None = None) -> int:
        """Revoke a user's tokens (those with ``label``, or all); returns how many."""
        result: str = await self.conn.execute(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR label = $2)",
            user_id,
            label,
        )
        return int(result.split()[-1])

    async def active_tokens(self, user_id: int) -> list[TokenInfo]:
        """The user's tokens that are not revoked, oldest first."""
        rows = await self.conn.fetch(
            _TOKEN_INFO + "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, token_sha256", user_id
        )
        return [TokenInfo(**dict(row)) for row in rows]

    async def token_info(self, user_id: int, token_id: str) -> TokenInfo | None:
        row = await self.conn.fetchrow(
            _TOKEN_INFO + f"WHERE user_id = $1 AND left(token_sha256, {TOKEN_ID_LENGTH}) = $2", user_id, token_id
        )
        return None if row is None else TokenInfo(**dict(row))

    async def revoke_token_of(self, user_id: int, token_id: str) -> bool:
        """Revoke one of the user's tokens by its id; False if the user has no such active token."""
        result: str = await self.conn.execute(
            "UPDATE api_tokens SET revoked_at = now() "
            f"WHERE user_id = $1 AND left(token_sha256, {TOKEN_ID_LENGTH}) = $2 AND revoked_at IS NULL",
            user_id,
            token_id,
        )
        return not result.endswith(" 0")
