"""PostgreSQL for Skyport services: the pool, migrations, the transactional outbox, idempotent consumers."""

from skyport.db.idempotency import claim_event, idempotent
from skyport.db.migrations import LIBRARY_MIGRATIONS, Migrator, SchemaBehind
from skyport.db.outbox import OutboxRelay, enqueue
from skyport.db.pool import Database, resolve_database_url

__all__ = [
    "LIBRARY_MIGRATIONS",
    "Database",
    "Migrator",
    "OutboxRelay",
    "SchemaBehind",
    "claim_event",
    "enqueue",
    "idempotent",
    "resolve_database_url",
]
