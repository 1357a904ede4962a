-- The trace context (a W3C traceparent) of the group commit that wrote an outbox row, so the relay's
-- delivery span can link to the commits it carries (docs/runbook.md, "Tracing a form"). NULL when
-- tracing is off: nothing is written then. Nullable without a default: adding it rewrites no row.
ALTER TABLE tally.outbox ADD COLUMN traceparent text;
