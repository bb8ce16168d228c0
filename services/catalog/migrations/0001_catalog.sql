-- The catalog: who may see what (users, tokens, programs, members) and what the archive holds (products and
-- every version of them). See services/catalog/README.md for the access rule and the catalog order.

-- People. Usernames are lower-case so that "Alice" and "alice" are never two accounts.
CREATE TABLE users (
    user_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username     text        NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._@+-]{0,127}$'),
    email        text,
    display_name text,
    is_admin     boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Bearer tokens: 256 random bits each, so a plain sha256 is as strong as a slow hash and can be looked up.
-- The token itself is shown once when issued and never stored.
CREATE TABLE api_tokens (
    token_sha256 text PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    user_id      bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    label        text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Programs (proposals). A program the catalog first hears of in a file.archived event is created then,
-- with no title and no PI; exclusive_access_months NULL means each file's own release date applies.
CREATE TABLE programs (
    mission                 text        NOT NULL CHECK (mission = upper(mission)),
    propid                  text        NOT NULL CHECK (propid <> ''),
    title                   text,
    exclusive_access_months integer     CHECK (exclusive_access_months BETWEEN 0 AND 1200),
    created_at              timestamptz NOT NULL DEFAULT now(),
    first_data_at           timestamptz,  -- set with the program's first product, when dataset.first is emitted
    PRIMARY KEY (mission, propid)
);

-- Who belongs to a program. The PI is the member whose role is 'pi' (at most one per program): the access
-- rule reads membership only, so there is no second place where a PI could be recorded differently.
-- granted_by is NULL when an administration command made the grant.
CREATE TABLE program_members (
    mission    text        NOT NULL,
    propid     text        NOT NULL,
    user_id    bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    role       text        NOT NULL CHECK (role IN ('pi', 'coi', 'collaborator')),
    granted_by bigint      REFERENCES users ON DELETE SET NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mission, propid, user_id),
    FOREIGN KEY (mission, propid) REFERENCES programs ON DELETE CASCADE
);

CREATE UNIQUE INDEX program_members_one_pi ON program_members (mission, propid) WHERE role = 'pi';
CREATE INDEX program_members_user ON program_members (user_id);

-- Every grant and revocation, kept after the membership itself is gone (who had access, when, by whom).
CREATE TABLE membership_changes (
    change_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mission    text        NOT NULL,
    propid     text        NOT NULL,
    username   text        NOT NULL,
    role       text        CHECK (role IN ('pi', 'coi', 'collaborator')),
    change     text        NOT NULL CHECK (change IN ('granted', 'revoked')),
    changed_by text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX membership_changes_program ON membership_changes (mission, propid, changed_at);

-- The catalog order: every change to a product (catalogued, new version, made public) takes the next
-- number, under the lock described in services/catalog/storage.py, so that this order is commit order.
CREATE SEQUENCE product_change_seq;

-- One row per archive ID, describing its current version. Column names follow IVOA ObsCore 1.1 where it
-- names the thing: t_min/t_max in MJD (UTC), t_exptime in seconds, em_min/em_max in metres, access_estsize
-- in kilobytes; s_ra/s_dec in degrees (ICRS).
CREATE TABLE products (
    archive_id        text             PRIMARY KEY,
    version           integer          NOT NULL CHECK (version >= 1),
    mission           text             NOT NULL,
    propid            text             NOT NULL,
    obset             text,
    level             text             NOT NULL,  -- the mission's own processing level (KECK 0, JWST 2b)
    product           text,                       -- the kind of file in the instrument configuration (raw, cal)
    intent            text             NOT NULL CHECK (intent IN ('science', 'calibration')),
    original_filename text             NOT NULL,
    release_date      date             NOT NULL,
    public_since      timestamptz,                -- NULL while proprietary; see services/catalog/access.py
    released_early    boolean          NOT NULL DEFAULT false,
    obs_collection    text             NOT NULL,
    obs_id            text             NOT NULL,
    dataproduct_type  text,
    calib_level       smallint         CHECK (calib_level BETWEEN 0 AND 4),
    target_name       text,
    s_ra              double precision CHECK (s_ra >= 0 AND s_ra < 360),
    s_dec             double precision CHECK (s_dec BETWEEN -90 AND 90),
    healpix           bigint,                     -- NESTED cell at order 29 of (s_ra, s_dec); see sky.py
    t_min             double precision,
    t_max             double precision,
    t_exptime         double precision CHECK (t_exptime >= 0),
    em_min            double precision,
    em_max            double precision,
    instrument_name   text             NOT NULL,
    facility_name     text             NOT NULL,
    access_format     text             NOT NULL,
    access_estsize    bigint           NOT NULL CHECK (access_estsize >= 0),
    filters           text[]           NOT NULL DEFAULT '{}',
    header            jsonb            NOT NULL DEFAULT '{}',  -- the keywords the instrument configuration selects
    observed_at       timestamptz,
    written_at        timestamptz,
    first_archived_at timestamptz      NOT NULL,
    archived_at       timestamptz      NOT NULL,  -- of the current version
    catalogued_at     timestamptz      NOT NULL,  -- of the last change
    seq               bigint           NOT NULL UNIQUE,
    CHECK ((healpix IS NULL) = (s_ra IS NULL) AND (s_ra IS NULL) = (s_dec IS NULL)),
    FOREIGN KEY (mission, propid) REFERENCES programs
);

CREATE INDEX products_healpix ON products (healpix) WHERE healpix IS NOT NULL;
CREATE INDEX products_program ON products (mission, propid, level);
CREATE INDEX products_t_min ON products (t_min);
-- The release scheduler's work list: proprietary products by release date.
CREATE INDEX products_release ON products (release_date) WHERE public_since IS NULL;

-- Every version of every product, kept when a newer one arrives. The product row is written last in its
-- transaction (see storage.py), hence the deferred foreign key.
CREATE TABLE product_versions (
    archive_id         text        NOT NULL REFERENCES products DEFERRABLE INITIALLY DEFERRED,
    version            integer     NOT NULL CHECK (version >= 1),
    sha256             text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes         bigint      NOT NULL CHECK (size_bytes >= 0),
    storage_path       text        NOT NULL,  -- relative to the archive storage root
    original_filename  text        NOT NULL,
    software_version   text,
    reference_files    text[]      NOT NULL DEFAULT '{}',
    supersedes_version integer,
    transfer_id        text,
    archived_at        timestamptz NOT NULL,
    catalogued_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (archive_id, version)
);
