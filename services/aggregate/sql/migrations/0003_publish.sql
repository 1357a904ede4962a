-- What publish needs to write a TPS's Sirekap file from the same snapshot as the totals above it:
-- the form's whole administrasi (18 counts) and its photos. NULL administrasi: sent before this
-- migration, or by a sender without it; the TPS file then shows the counts aggregate has.
ALTER TABLE aggregate.tps_result
    ADD COLUMN administrasi jsonb,
    ADD COLUMN photos text[] NOT NULL DEFAULT '{}';
