-- Several chains (docs/domain.md, "The chain"): the one head row every commit locked serialized all
-- writers, so an election may split its chain into K, each with its own head row and gapless
-- positions, a TPS's forms always in the chain SHA-256 of its code picks. K is fixed once the first
-- form is stored (tally.chain_count). Existing rows and the existing head become chain 0, hashes
-- unchanged: they are what receipts and published heads already carry.
ALTER TABLE tally.chain_head DROP CONSTRAINT chain_head_pkey;
ALTER TABLE tally.chain_head DROP COLUMN singleton;
ALTER TABLE tally.chain_head ADD COLUMN chain integer NOT NULL DEFAULT 0 CHECK (chain >= 0);
ALTER TABLE tally.chain_head ADD PRIMARY KEY (chain);
ALTER TABLE tally.chain_head ALTER COLUMN chain DROP DEFAULT;

-- How many chains this election runs: one row.
CREATE TABLE tally.chain_count (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    chains integer NOT NULL CHECK (chains BETWEEN 1 AND 1024)
);
INSERT INTO tally.chain_count (singleton, chains) VALUES (true, 1);

-- The default is the one-chain election's chain; the committer always states the chain it linked into.
ALTER TABLE tally.submission ADD COLUMN chain integer NOT NULL DEFAULT 0 CHECK (chain >= 0);
ALTER TABLE tally.submission DROP CONSTRAINT submission_chain_position_key;
ALTER TABLE tally.submission ADD CONSTRAINT submission_chain_position UNIQUE (chain, chain_position);
ALTER TABLE tally.submission DROP CONSTRAINT submission_chain_version_check;
ALTER TABLE tally.submission ADD CONSTRAINT submission_chain_version_check CHECK (chain_version IN (1, 2, 3));
