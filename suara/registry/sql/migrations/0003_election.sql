-- The election this registry is for, named at `suara registry load`: every signed form, recap and
-- credential names it, so a form signed in a rehearsal is refused on the real night. The newest
-- load's id is the election's; a reload keeps it unless the operator names another.
ALTER TABLE registry.load
  ADD COLUMN election_id text CHECK (election_id ~ '^[a-z0-9][a-z0-9._-]{0,63}$');
