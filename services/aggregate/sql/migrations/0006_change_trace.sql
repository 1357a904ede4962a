-- The trace context (a W3C traceparent) of the apply span that took each change sequence, so publish's
-- cycle span can link to the applies whose changes it published (docs/runbook.md, "Tracing a form").
-- One row per sequence, not a column of aggregate.change, whose rows (every area a batch touched) would
-- each repeat it. Written only by a traced apply: with tracing off nothing is written here, nor read.
CREATE TABLE aggregate.change_trace (
    sequence bigint PRIMARY KEY,
    traceparent text NOT NULL CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$')
);
