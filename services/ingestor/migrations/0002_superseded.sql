-- Content a monitor sent too early (its instrument's completion rule took a file that later grew or changed):
-- the later, complete file replaced it. Kept so that the partial content, if it arrives late or again, is
-- recognised and never archived as a version of its own; archived says whether it had been archived (and its
-- bytes replaced in storage by the complete file's) before the complete file came.
CREATE TABLE superseded_contents (
    archive_id    text        NOT NULL,
    sha256        text        NOT NULL,
    size_bytes    bigint      NOT NULL,
    version       integer     NOT NULL,  -- the version that holds the complete file
    archived      boolean     NOT NULL,
    transfer_id   text        NOT NULL,  -- the complete file's transfer
    superseded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (archive_id, sha256)
);
