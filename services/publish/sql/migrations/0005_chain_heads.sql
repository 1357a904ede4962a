-- With several tally chains (docs/domain.md, "The chain") a snapshot publishes every chain's signed head:
-- kept here as published (docs/layout.md `chain_heads`), so that while tally is unreachable the site
-- keeps carrying all of them. NULL with one chain: the chain_* columns hold its head, as before.
ALTER TABLE publish.cursor ADD COLUMN chain_heads jsonb;
ALTER TABLE publish.snapshot ADD COLUMN chain_heads jsonb;
