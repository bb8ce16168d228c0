-- The transactional outbox: events written in the same transaction as the change they describe,
-- published afterwards by the relay (skyport.db.outbox.OutboxRelay).
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    event_id       text        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    subject        text,
    routing_key    text        NOT NULL,
    correlation_id text,
    body           bytea       NOT NULL,
    event_time     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);

-- The relay reads the unsent rows in order; a partial index keeps that cheap however long the history.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
