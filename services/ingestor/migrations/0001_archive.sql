-- Every version of every archived file, as the ingestor stored it.
CREATE TABLE archived_files (
    archive_id        text        NOT NULL,
    version           integer     NOT NULL CHECK (version >= 1),
    sha256            text        NOT NULL,
    size_bytes        bigint      NOT NULL,
    storage_path      text        NOT NULL,
    mission           text        NOT NULL,
    instrument        text        NOT NULL,
    level             text        NOT NULL,
    original_filename text        NOT NULL,
    transfer_id       text        NOT NULL,
    archived_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (archive_id, version)
);

-- Re-ingestion check: is this exact content already archived under this archive ID?
CREATE INDEX archived_files_content ON archived_files (archive_id, sha256);
