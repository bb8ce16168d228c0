-- The notifier: subscriptions, the notices waiting to be sent, and the ledger of every delivery and attempt.
-- The consumer's handled event ids are in processed_events (the library's migrations), written in the
-- transaction that records the notices they caused. See services/notifier/README.md.

-- What a person asked to be told. A program subscription has mission and propid and no archive_id; a dataset
-- subscription names an obset of a program (mission, propid, obset) or one archive ID (mission and propid
-- then optional: an archive ID is unique in the archive, and may be subscribed to before it exists).
CREATE TABLE subscriptions (
    subscription_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text        NOT NULL,
    email           text        NOT NULL CHECK (email LIKE '%_@_%'),
    mission         text        CHECK (mission = upper(mission)),
    propid          text,
    obset           text,
    archive_id      text,
    triggers        text[]      NOT NULL CHECK (triggers <@ ARRAY['new', 'first', 'repro', 'public'] AND
                                                cardinality(triggers) > 0),
    min_level       text,       -- "this level or above" in the mission's order (instrument configuration)
    frequency       text        NOT NULL DEFAULT 'daily'
                                CHECK (frequency IN ('fast', 'hourly', 'daily', 'weekly', 'monthly')),
    time_of_day     time        NOT NULL DEFAULT '08:00',
    time_zone       text        NOT NULL DEFAULT 'UTC',
    channel         text        NOT NULL DEFAULT 'email' CHECK (channel IN ('email')),
    active          boolean     NOT NULL DEFAULT true,   -- false once unsubscribed
    stopped_at      timestamptz,                          -- the channel refused permanently (5xx)
    stopped_reason  text,
    fast_next_at    timestamptz,                          -- a fast notice waits until then (coalescing, cap)
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((archive_id IS NOT NULL) OR (mission IS NOT NULL AND propid IS NOT NULL)),
    CHECK (obset IS NULL OR (archive_id IS NULL AND propid IS NOT NULL)),
    CHECK (min_level IS NULL OR mission IS NOT NULL)
);

-- Matching looks subscriptions up by program (program and obset subscriptions) or by archive ID, each through
-- its own partial index; inactive ones are not in them.
CREATE INDEX subscriptions_by_program ON subscriptions (mission, propid)
    WHERE archive_id IS NULL AND active AND stopped_at IS NULL;
CREATE INDEX subscriptions_by_archive_id ON subscriptions (archive_id)
    WHERE archive_id IS NOT NULL AND active AND stopped_at IS NULL;
CREATE INDEX subscriptions_by_user ON subscriptions (username);

-- One delivered (or refused, or withheld) email: one fast notice of one subscription, or one person's digest.
-- message_key makes its Message-ID: the same notices claimed again after a crash are sent under the same id.
CREATE TABLE deliveries (
    delivery_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username         text        NOT NULL,
    email            text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('fast', 'digest')),
    subscription_ids bigint[]    NOT NULL,
    message_key      text        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('sent', 'failed', 'withheld')),
    reason           text,
    content          jsonb,                                -- what the email said (files, events), for resend
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX deliveries_by_user ON deliveries (username, created_at);
CREATE INDEX deliveries_by_key ON deliveries (message_key);

-- Every attempt at the SMTP server, with its answer.
CREATE TABLE delivery_attempts (
    attempt_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint      REFERENCES deliveries ON DELETE CASCADE,
    subscription_ids bigint[] NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    outcome       text        NOT NULL CHECK (outcome IN ('accepted', 'temporary', 'permanent')),
    smtp_code     integer,
    smtp_response text        NOT NULL
);

-- What an event told one subscription, waiting for its time (due_at) and its turn.
CREATE TABLE pending_notices (
    notice_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint      NOT NULL REFERENCES subscriptions ON DELETE CASCADE,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    event_time      timestamptz NOT NULL,
    mission         text        NOT NULL,
    propid          text        NOT NULL,
    level           text        NOT NULL,
    data            jsonb       NOT NULL,   -- the event's data, its files narrowed to the subscription's
    due_at          timestamptz NOT NULL,   -- fast: now; digests: the end of the subscriber's period
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivery_id     bigint      REFERENCES deliveries,
    resends         integer     NOT NULL DEFAULT 0,     -- an operator's resends: a new Message-ID each
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'sent', 'failed', 'withheld')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription_id, event_id)
);

CREATE INDEX pending_notices_due ON pending_notices (due_at, subscription_id) WHERE state = 'pending';
CREATE INDEX pending_notices_delivery ON pending_notices (delivery_id);
