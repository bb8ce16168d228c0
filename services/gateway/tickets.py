"""Tickets: short-lived, single-use stand-ins for a user's token, for browsers.

A browser cannot set an ``Authorization`` header on a WebSocket or on a plain link, and a token in a URL
ends up in logs and history. So the page trades its token for a ticket (``POST /v1/tickets``, with the
token in the header) and puts the ticket in the URL: it is good for one use, for a few seconds, and is
worth nothing afterwards. Tickets live in this process's memory; several gateways behind one address
need sticky sessions for the few seconds between issue and use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.gateway.catalog_client import User

TICKET_PREFIX = "tk_"


@dataclass(frozen=True)
class Ticket:
    token: str
    user: User
    expires: float


class Tickets:
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.clock = clock
        self.limit = limit
        self._tickets: dict[str, Ticket] = {}

    def issue(self, token: str, user: User) -> str:
        self._forget_expired()
        if len(self._tickets) >= self.limit:
            raise OverflowError("too many unused tickets; try again in a few seconds")
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        self._tickets[ticket] = Ticket(token, user, self.clock() + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> Ticket | None:
        """The ticket's token and user, once; None when unknown, used or expired."""
        found = self._tickets.pop(ticket, None)
        if found is None or found.expires < self.clock():
            return None
        return found

    def _forget_expired(self) -> None:
        now = self.clock()
        for key in [key for key, ticket in self._tickets.items() if ticket.expires < now]:
            del self._tickets[key]
