-- The relay's wake-up hint: one NOTIFY per committing statement that adds
-- outbox rows (a group commit is one statement, so one per batch, not per
-- form). NOTIFY is delivered on commit only, and it is a hint: the relay also
-- polls, so a missed notification delays delivery, never loses it.
CREATE FUNCTION tally.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('suara_tally_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON tally.outbox
FOR EACH STATEMENT EXECUTE FUNCTION tally.outbox_notify();
