-- The chain head publish last published, with tally's signature over it (so the site keeps carrying a
-- signed head while tally is unreachable), and every chain key tally has signed with: the site lists them
-- all (suara/kunci-rantai.json), so heads signed before a key rotation still verify.
ALTER TABLE publish.cursor ADD COLUMN chain_key_id text, ADD COLUMN chain_signature bytea;
ALTER TABLE publish.snapshot ADD COLUMN chain_key_id text, ADD COLUMN chain_signature bytea;

CREATE TABLE publish.chain_key (
    key_id text PRIMARY KEY,
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    first_position bigint NOT NULL,            -- the first head publish saw signed by it
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
