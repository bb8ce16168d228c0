-- The scrubber: when each version's bytes in storage were last hashed again (NULL: not yet; a new version is
-- proven by the receiver's hash, and is first due one scrub interval after it was archived), and what it found.
ALTER TABLE archived_files ADD COLUMN scrubbed_at timestamptz;
CREATE INDEX archived_files_scrub_due ON archived_files ((coalesce(scrubbed_at, archived_at)));

-- A version whose bytes in storage are not what was archived (changed, truncated, missing): kept for operators.
CREATE TABLE scrub_findings (
    finding_id      bigserial   PRIMARY KEY,
    archive_id      text        NOT NULL,
    version         integer     NOT NULL,
    storage_path    text        NOT NULL,
    expected_sha256 text        NOT NULL,
    expected_size   bigint      NOT NULL,
    found_sha256    text,                   -- NULL when the file could not be read
    found_size      bigint,
    problem         text        NOT NULL,
    found_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scrub_findings_version ON scrub_findings (archive_id, version);
