"""The file.archived consumer: hand each archived file to the cataloguer, in the consumer's transaction."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.catalog.cataloguing import Cataloguer, InvalidProduct
from skyport.bus import PermanentError
from skyport.db.idempotency import TransactionalHandler
from skyport.events import CloudEvent, FileArchived


def on_file_archived(cataloguer: Cataloguer) -> TransactionalHandler:
    """The transactional handler to wrap with :func:`skyport.db.idempotent`."""

    async def catalogue(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
        archived: FileArchived = event.data
        try:
            await cataloguer.catalogue(conn, archived, event.correlationid)
        except InvalidProduct as exc:
            # Bad content: retrying cannot help, so the message goes to the dead letters with the reason.
            raise PermanentError(str(exc)) from exc

    return catalogue
