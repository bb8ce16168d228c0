-- A removed site keeps its name (its transfers refer to it) and loses its credential; `add-site` gives it a new one.
ALTER TABLE sites ALTER COLUMN token_sha256 DROP NOT NULL;
ALTER TABLE sites ADD COLUMN removed_at timestamptz;
