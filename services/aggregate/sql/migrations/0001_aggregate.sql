-- aggregate owns this schema: the current contribution of every TPS (leaves),
-- the rolled-up row of every area, the change log publish follows, and the
-- subtree totals received from other aggregate instances (federation).
--
-- Votes are bigint[] aligned to the contest's choices ordered by (nomor_urut, id)
-- as registry.choice holds them: one row per TPS or area whatever the number of
-- choices (pdpr has 108), summed element-wise in SQL.
CREATE SCHEMA IF NOT EXISTS aggregate;

-- One row: the global change sequence. Every applying transaction locks it first,
-- which serializes appliers (two relays at once cannot lose an update) and makes
-- sequences commit in order, so `Changes(since)` never skips one.
CREATE TABLE aggregate.head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sequence bigint NOT NULL CHECK (sequence >= 0),
    registry_load bigint  -- the registry.load the area rows were seeded from
);
INSERT INTO aggregate.head (singleton, sequence) VALUES (true, 0);

-- The current version of each (tps, contest). Idempotency is the constraint plus
-- `ON CONFLICT … WHERE version < EXCLUDED.version`: an update never lowers it.
CREATE TABLE aggregate.tps_result (
    tps text NOT NULL CHECK (tps ~ '^[0-9]{13}$'),
    contest text NOT NULL,
    desa text GENERATED ALWAYS AS (left(tps, 10)) STORED,
    version bigint NOT NULL CHECK (version >= 1),
    quarantined boolean NOT NULL,
    failed_checks text[] NOT NULL DEFAULT '{}',
    -- As sent, also when quarantined (for audit); a quarantined row contributes zero.
    votes bigint[] NOT NULL,
    suara_sah bigint NOT NULL CHECK (suara_sah >= 0),
    suara_tidak_sah bigint NOT NULL CHECK (suara_tidak_sah >= 0),
    suara_total bigint NOT NULL CHECK (suara_total >= 0),
    dpt bigint NOT NULL CHECK (dpt >= 0),
    pengguna bigint NOT NULL CHECK (pengguna >= 0),
    changed_sequence bigint NOT NULL,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (tps, contest)
) WITH (fillfactor = 80);  -- room on the page for HOT updates: no indexed column ever changes
-- A desa is recomputed from its TPS rows.
CREATE INDEX tps_result_desa ON aggregate.tps_result (contest, desa);

-- Every area (desa, kecamatan, kabupaten/kota, provinsi; '' = nasional) where the
-- contest has at least one TPS. Seeded from the registry with tps_total; the
-- totals are recomputed per batch from the children, only for what changed.
CREATE TABLE aggregate.area_total (
    contest text NOT NULL,
    area text NOT NULL CHECK (area ~ '^([0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{10})?$'),
    parent text CHECK ((parent IS NULL) = (area = '')),
    votes bigint[] NOT NULL,
    suara_sah bigint NOT NULL DEFAULT 0,
    suara_tidak_sah bigint NOT NULL DEFAULT 0,
    suara_total bigint NOT NULL DEFAULT 0,
    dpt bigint NOT NULL DEFAULT 0,
    pengguna bigint NOT NULL DEFAULT 0,
    tps_total bigint NOT NULL DEFAULT 0,
    tps_reported bigint NOT NULL DEFAULT 0,     -- TPS whose current form counts
    tps_quarantined bigint NOT NULL DEFAULT 0,  -- TPS whose current form is quarantined
    changed_sequence bigint NOT NULL DEFAULT 0,
    changed_at timestamptz,
    PRIMARY KEY (contest, area)
) WITH (fillfactor = 80);
CREATE INDEX area_total_parent ON aggregate.area_total (contest, parent);

-- Subtree totals another instance computed (federation). While a row exists for
-- an area, that area's totals are these, not the sum of this instance's own rows.
CREATE TABLE aggregate.area_feed (
    area text NOT NULL CHECK (area ~ '^([0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{10})$'),
    contest text NOT NULL,
    source text NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    votes bigint[] NOT NULL,
    suara_sah bigint NOT NULL CHECK (suara_sah >= 0),
    suara_tidak_sah bigint NOT NULL CHECK (suara_tidak_sah >= 0),
    suara_total bigint NOT NULL CHECK (suara_total >= 0),
    dpt bigint NOT NULL CHECK (dpt >= 0),
    pengguna bigint NOT NULL CHECK (pengguna >= 0),
    tps_total bigint NOT NULL CHECK (tps_total >= 0),
    tps_reported bigint NOT NULL CHECK (tps_reported >= 0),
    tps_quarantined bigint NOT NULL CHECK (tps_quarantined >= 0),
    received_at timestamptz NOT NULL,
    PRIMARY KEY (area, contest)
);

-- Which rows (areas, and TPS by their 13-digit code) each change sequence touched.
CREATE TABLE aggregate.change (
    sequence bigint NOT NULL,
    contest text NOT NULL,
    area text NOT NULL,
    PRIMARY KEY (sequence, contest, area)
);

-- Who may call aggregate: service credentials (suara.runtime.service_auth; `suara service issue`).
-- Only the public key is kept; roles do not overlap, so a leaked relay key cannot read and a
-- leaked publish key cannot write.
CREATE TABLE aggregate.service_credential (
    id text PRIMARY KEY CHECK (id ~ '^svc_[0-9a-f]{12}$'),
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('writer', 'reader')),
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

