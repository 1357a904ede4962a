-- Rekapitulasi berjenjang: the officials who enter manual recap totals, and every
-- recap version they signed. The key (area, contest, version) is unique by
-- constraint, as for TPS forms; the current recap is the highest version.
CREATE TABLE aggregate.official (
    official_id text PRIMARY KEY CHECK (official_id ~ '^off_[0-9a-f]{24}$'),
    area text NOT NULL CHECK (area ~ '^([0-9]{2}|[0-9]{4}|[0-9]{6})$'),
    role text NOT NULL CHECK (
        (role = 'ppk' AND length(area) = 6)
        OR (role = 'kpu-kabkota' AND length(area) = 4)
        OR (role = 'kpu-provinsi' AND length(area) = 2)
    ),
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    label text NOT NULL DEFAULT '',
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE aggregate.recap (
    id uuid PRIMARY KEY,
    area text NOT NULL,
    contest text NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    payload bytea NOT NULL,
    payload_sha256 bytea NOT NULL CHECK (length(payload_sha256) = 32),
    signature bytea NOT NULL CHECK (length(signature) = 64),
    official_id text NOT NULL REFERENCES aggregate.official (official_id),
    votes bigint[] NOT NULL,  -- in the contest's choice order, like aggregate.area_total
    suara_sah bigint NOT NULL CHECK (suara_sah >= 0),
    suara_tidak_sah bigint NOT NULL CHECK (suara_tidak_sah >= 0),
    suara_total bigint NOT NULL CHECK (suara_total >= 0),
    dpt bigint NOT NULL CHECK (dpt >= 0),
    pengguna bigint NOT NULL CHECK (pengguna >= 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recap_key UNIQUE (area, contest, version)
);
