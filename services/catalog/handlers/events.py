"""The file.archived consumer: hand archived files to the cataloguer, in the consumer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from services.catalog.cataloguing import Cataloguer, InvalidProduct
from skyport.bus import PermanentError
from skyport.db.idempotency import TransactionalBatchHandler, TransactionalHandler
from skyport.events import CloudEvent, FileArchived


def on_file_archived(cataloguer: Cataloguer) -> TransactionalHandler:
    """The transactional handler to wrap with :func:`skyport.db.idempotent` (one event per transaction)."""

    async def catalogue(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        archived: FileArchived = event.data
        try:
            await cataloguer.catalogue(conn, archived, event.correlationid)
        except InvalidProduct as exc:
            # Bad content: retrying cannot help, so the message goes to the dead letters with the reason.
            raise PermanentError(str(exc)) from exc

    return catalogue


def on_file_archived_batch(cataloguer: Cataloguer) -> TransactionalBatchHandler:
    """The transactional handler to wrap with :func:`skyport.db.idempotent_batch` (a batch per transaction).

    A refused file fails its whole batch; the bus then catalogues the batch's events one by one with
    :func:`on_file_archived`, so that the refused one goes to the dead letters with its reason and the others
    are catalogued.
    """

    async def catalogue(conn: asyncpg.Connection, events: Sequence[CloudEvent[Any]]) -> None:
        try:
            await cataloguer.catalogue_batch(conn, [(event.data, event.correlationid) for event in events])
        except InvalidProduct as exc:
            raise PermanentError(str(exc)) from exc

    return catalogue
