-- Observatory sites and their credentials (only the sha256 of each token is kept).
CREATE TABLE sites (
    name         text PRIMARY KEY,
    token_sha256 text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per file a site sends; the same manifest and checksum twice is the same transfer.
CREATE TABLE transfers (
    transfer_id       uuid PRIMARY KEY,
    site              text        NOT NULL REFERENCES sites (name),
    archive_id        text        NOT NULL,
    sha256            text        NOT NULL,
    size_bytes        bigint      NOT NULL,
    manifest          jsonb       NOT NULL,
    state             text        NOT NULL CHECK (state IN ('created', 'received', 'ingested', 'failed')),
    reason            text,
    staged_path       text,
    version           integer,
    duplicate         boolean     NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site, archive_id, sha256)
);
