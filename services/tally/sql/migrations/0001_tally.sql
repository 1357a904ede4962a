-- tally owns this schema: devices, credentials, every stored submission, the
-- chain head, photos, and the outbox the relay drains to aggregate.
CREATE SCHEMA IF NOT EXISTS tally;

CREATE TABLE tally.device (
    device_id text PRIMARY KEY,
    tps text NOT NULL CHECK (tps ~ '^[0-9]{13}$'),
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    label text NOT NULL DEFAULT '',
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX device_tps ON tally.device (tps);

-- Only a hash of the admin token is kept: a database dump does not grant admin.
CREATE TABLE tally.admin_credential (
    id text PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    label text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- One row: the last link of the chain. Every writing transaction locks it, which
-- is also what serializes concurrent writers (group commit keeps that cheap).
CREATE TABLE tally.chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position bigint NOT NULL CHECK (position >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO tally.chain_head (singleton, position, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Every stored form, current or not. The key (tps, contest, version) is unique
-- by constraint: a form is never stored twice, whatever the callers do.
CREATE TABLE tally.submission (
    id uuid PRIMARY KEY,
    tps text NOT NULL CHECK (tps ~ '^[0-9]{13}$'),
    contest text NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    payload bytea NOT NULL,
    payload_sha256 bytea NOT NULL CHECK (length(payload_sha256) = 32),
    signature bytea NOT NULL CHECK (length(signature) = 64),
    device_id text NOT NULL REFERENCES tally.device (device_id),
    outcome text NOT NULL CHECK (outcome IN ('ACCEPTED', 'QUARANTINED', 'SUPERSEDED')),
    failed_checks text[] NOT NULL DEFAULT '{}',
    photo_sha256 text[] NOT NULL DEFAULT '{}',
    chain_position bigint NOT NULL UNIQUE CHECK (chain_position >= 1),
    chain_hash bytea NOT NULL CHECK (length(chain_hash) = 32),
    received_at timestamptz NOT NULL,
    CONSTRAINT submission_key UNIQUE (tps, contest, version)
);

-- The current (highest accepted) version per TPS and contest.
CREATE TABLE tally.current (
    tps text NOT NULL,
    contest text NOT NULL,
    version bigint NOT NULL,
    submission_id uuid NOT NULL UNIQUE REFERENCES tally.submission (id),
    PRIMARY KEY (tps, contest)
);

-- Form photos, content-addressed: the same photo sent twice is stored once.
CREATE TABLE tally.photo (
    sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content_type text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    size integer NOT NULL CHECK (size > 0),
    content bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- Written in the same transaction as the submission it announces; the relay
-- (aggregate issue) delivers pending rows in id order and marks them delivered.
CREATE TABLE tally.outbox (
    id bigserial PRIMARY KEY,
    submission_id uuid NOT NULL UNIQUE REFERENCES tally.submission (id),
    tps text NOT NULL,
    contest text NOT NULL,
    version bigint NOT NULL,
    counts jsonb NOT NULL,
    quarantined boolean NOT NULL,
    failed_checks text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX outbox_pending ON tally.outbox (id) WHERE delivered_at IS NULL;

-- What an operator must look at: conflicting payloads for one version, and
-- the like. Kept, not just logged.
CREATE TABLE tally.alarm (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    tps text NOT NULL,
    contest text NOT NULL,
    version bigint NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    raised_at timestamptz NOT NULL DEFAULT now()
);
