"""The gateway API's own answers (as its OpenAPI document shows them); the routes it forwards answer the catalog's."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Ticket(BaseModel):
    """``POST /v1/tickets``: a ticket that stands in for the token once (``?ticket=``), within ``expires_in`` s."""

    model_config = ConfigDict(frozen=True)

    ticket: str
    expires_in: float
