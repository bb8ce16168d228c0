"""PostgreSQL for Skyport services: the pool, migrations, the transactional outbox, idempotent consumers."""

from skyport.db.idempotency import claim_event, claim_events, idempotent, idempotent_batch
from skyport.db.migrations import LIBRARY_MIGRATIONS, Migrator, SchemaBehind
from skyport.db.outbox import OutboxRelay, enqueue, enqueue_many
from skyport.db.pool import Database, resolve_database_url

__all__ = [
    "LIBRARY_MIGRATIONS",
    "Database",
    "Migrator",
    "OutboxRelay",
    "SchemaBehind",
    "claim_event",
    "claim_events",
    "enqueue",
    "enqueue_many",
    "idempotent",
    "idempotent_batch",
    "resolve_database_url",
]
