-- The observing night of each product (skyport.nights): the local date at the site on which the night of its
-- observation began, computed at cataloguing from observed_at and the mission's [night] rule. NULL for a
-- product without an observation time, which belongs to no night.
ALTER TABLE products ADD COLUMN night date;

-- Products catalogued before nights existed get the rule of a mission that configures none (UTC, noon to
-- noon); a new version of a product recomputes its night with its mission's rule.
UPDATE products SET night = ((observed_at AT TIME ZONE 'UTC') - interval '12 hours')::date WHERE observed_at IS NOT NULL;

-- A night's files of some programs: the gateway's backlog and the page's night.
CREATE INDEX products_night ON products (night, mission, propid) WHERE night IS NOT NULL;
