-- The change feed's pages (docs/layout.md, "The change feed"), saved with the snapshot they belong to in
-- the transaction that commits it: a page is final once saved, and a publisher that dies before writing
-- it to the site writes these very bytes on its next cycle. Only the newest snapshots are kept here.
CREATE TABLE publish.feed_page (
    snapshot bigint NOT NULL,
    part integer NOT NULL CHECK (part >= 0),
    body bytea NOT NULL,
    PRIMARY KEY (snapshot, part)
);
