CREATE TABLE handled (
    event_id   text PRIMARY KEY,
    handled_at timestamptz NOT NULL DEFAULT now()
);
