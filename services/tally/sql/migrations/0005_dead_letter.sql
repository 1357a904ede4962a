-- Outbox rows the relay set aside so that the rest of the outbox drains: aggregate refused them
-- (UPDATE_OUTCOME_REFUSED, with its reason), or they could not be sent, or sent alone they failed
-- again and again. Their outbox row is marked delivered (the relay is done with it); an alarm is
-- raised for each. `suara tally dead-letters` lists them; `… redeliver` clears delivered_at again
-- once the cause is repaired, and stamps redelivered_at here. Set aside again, a row's entry is
-- updated in place (attempts + 1).
CREATE TABLE tally.dead_letter (
    outbox_id bigint PRIMARY KEY REFERENCES tally.outbox (id),
    tps text NOT NULL,
    contest text NOT NULL,
    version bigint NOT NULL,
    reason text NOT NULL,
    fields text[] NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 1,
    dead_at timestamptz NOT NULL DEFAULT now(),
    redelivered_at timestamptz
);
CREATE INDEX dead_letter_open ON tally.dead_letter (outbox_id) WHERE redelivered_at IS NULL;
