-- Links written from now on cover every stored fact of a submission (chain version 2, docs/domain.md).
-- Rows already stored keep version 1 and their hashes: re-linking them would change hashes that
-- receipts and published heads already carry, and those are the evidence the chain exists to keep.
-- New rows state their version (no default): the committer, which computes the link, says which.
ALTER TABLE tally.submission ADD COLUMN chain_version smallint NOT NULL DEFAULT 1 CHECK (chain_version IN (1, 2));
ALTER TABLE tally.submission ALTER COLUMN chain_version DROP DEFAULT;
