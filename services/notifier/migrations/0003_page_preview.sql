-- Editing, previewing and in-page notices. See services/notifier/README.md ("Preview", "In-page notices").

-- "This level or above" (the default) or "this level only".
ALTER TABLE subscriptions ADD COLUMN or_above boolean NOT NULL DEFAULT true;

-- A third channel: notices shown on the observer page (the inbox below), through the same claim and ledger.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_channel_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_channel_check CHECK (channel IN ('email', 'webhook', 'page'));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_channel_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_channel_check CHECK (channel IN ('email', 'webhook', 'page'));
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_channel_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_channel_check
    CHECK (channel IN ('email', 'webhook', 'page'));

-- One in-page notice: one program, trigger and level of one delivery, as an email's section shows it. Kept when
-- the subscription is deleted: what a person was told stays in their inbox.
CREATE TABLE inbox (
    inbox_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text        NOT NULL,
    subscription_id bigint,
    delivery_id     bigint      NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    subject         text        NOT NULL,
    content         jsonb       NOT NULL,   -- trigger, mission, propid, level, obsets, files, repro, notices
    created_at      timestamptz NOT NULL DEFAULT now(),
    read_at         timestamptz
);

CREATE INDEX inbox_by_user ON inbox (username, inbox_id DESC);
CREATE INDEX inbox_unread ON inbox (username) WHERE read_at IS NULL;

-- Every dataset event the notifier consumed, in a compact row, for 31 days: what a preview counts ("what would
-- these settings have sent over the last 30 days"). Written in the consumer's transaction, pruned by the
-- delivery loop.
CREATE TABLE event_history (
    event_id    text        PRIMARY KEY,
    event_time  timestamptz NOT NULL,
    type        text        NOT NULL,   -- new, first, repro, public
    mission     text        NOT NULL,   -- upper-case, as subscriptions keep it
    propid      text        NOT NULL,
    level       text        NOT NULL,
    obsets      text[]      NOT NULL,   -- the event's obsets and its files'
    archive_ids text[]      NOT NULL,
    files       integer     NOT NULL
);

CREATE INDEX event_history_by_program ON event_history (mission, propid, event_time);
CREATE INDEX event_history_by_archive_id ON event_history USING gin (archive_ids);
CREATE INDEX event_history_by_time ON event_history (event_time);
