-- publish owns this schema: how far it has published (the cursor into aggregate's change log),
-- the snapshots it has made, and the history documents (which a rebuild cannot recompute: they are
-- past states). The site itself is in the sink, never here.
CREATE SCHEMA IF NOT EXISTS publish;

-- Moved only after every file of a cycle is written: a cycle killed midway is redone from here.
CREATE TABLE publish.cursor (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sequence bigint NOT NULL CHECK (sequence >= 0),   -- the last aggregate change published
    snapshot bigint NOT NULL CHECK (snapshot >= 0),   -- the last snapshot id
    registry_load bigint,                             -- the registry load the region lists were written from
    chain_position bigint,
    chain_hash text,
    updated_at timestamptz
);
INSERT INTO publish.cursor (singleton, sequence, snapshot) VALUES (true, 0, 0);

CREATE TABLE publish.snapshot (
    id bigint PRIMARY KEY CHECK (id >= 1),
    sequence bigint NOT NULL,
    chain_position bigint,
    chain_hash text,
    files integer NOT NULL CHECK (files >= 0),
    full_rebuild boolean NOT NULL,
    published_at timestamptz NOT NULL
);

-- National and provincial totals of a contest at a snapshot (suara/riwayat/{contest}/{snapshot}.json).
CREATE TABLE publish.history (
    contest text NOT NULL,
    snapshot bigint NOT NULL,
    ts text NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (contest, snapshot)
);
