-- name: try_lock
-- One active publisher per database; the lock is the session's and goes with its connection.
SELECT pg_try_advisory_lock($1);

-- name: holds_lock
-- Whether this session still holds the lock (a bigint key is split into classid, objid).
SELECT EXISTS (
  SELECT 1 FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
    AND ((classid::bigint << 32) | objid::bigint) = $1
);

-- name: cursor
SELECT sequence, snapshot, registry_load, chain_position, chain_hash, chain_key_id, chain_signature,
       chain_heads::text AS chain_heads
FROM publish.cursor WHERE singleton;

-- name: remember_chain_key
INSERT INTO publish.chain_key (key_id, public_key, first_position) VALUES ($1, $2, $3)
ON CONFLICT (key_id) DO NOTHING;

-- name: chain_keys
SELECT key_id, public_key, first_position FROM publish.chain_key ORDER BY first_position, first_seen_at;

-- name: registry_load
-- The registry is shared reference data (see README): its load id says when region lists must be redone.
SELECT id, loaded_at FROM registry.load ORDER BY id DESC LIMIT 1;

-- name: save_history
INSERT INTO publish.history (contest, snapshot, ts, body) VALUES ($1, $2, $3, $4)
ON CONFLICT (contest, snapshot) DO UPDATE SET ts = EXCLUDED.ts, body = EXCLUDED.body;

-- name: history_index
SELECT snapshot, ts FROM publish.history WHERE contest = $1 ORDER BY snapshot;

-- name: history_body_before
SELECT body FROM publish.history WHERE contest = $1 AND snapshot < $2 ORDER BY snapshot DESC LIMIT 1;

-- name: drop_history
WITH gone AS (DELETE FROM publish.history WHERE contest = $1 AND snapshot = $2 RETURNING 1)
SELECT count(*) FROM gone;

-- name: history_of
SELECT snapshot, body FROM publish.history WHERE contest = $1 ORDER BY snapshot;

-- name: status
SELECT c.sequence, c.snapshot, c.chain_position, c.chain_hash, c.updated_at, s.files, s.full_rebuild
FROM publish.cursor c LEFT JOIN publish.snapshot s ON s.id = c.snapshot
WHERE c.singleton;

-- name: commit_cycle
-- The cycle's files are all written: move the cursor and record the snapshot, in one transaction.
WITH snap AS (
    INSERT INTO publish.snapshot (id, sequence, chain_position, chain_hash, files, full_rebuild, published_at,
                                  chain_key_id, chain_signature, chain_heads)
    VALUES ($2, $1, $3, $4, $5, $6, now(), $8, $9, $10::jsonb)
    ON CONFLICT (id) DO UPDATE
        SET sequence = EXCLUDED.sequence, chain_position = EXCLUDED.chain_position,
            chain_hash = EXCLUDED.chain_hash, files = EXCLUDED.files, full_rebuild = EXCLUDED.full_rebuild,
            published_at = EXCLUDED.published_at, chain_key_id = EXCLUDED.chain_key_id,
            chain_signature = EXCLUDED.chain_signature, chain_heads = EXCLUDED.chain_heads
)
UPDATE publish.cursor
SET sequence = $1, snapshot = $2, chain_position = $3, chain_hash = $4, registry_load = $7, updated_at = now(),
    chain_key_id = $8, chain_signature = $9, chain_heads = $10::jsonb
WHERE singleton;

-- name: published_sequence
-- The last aggregate change a snapshot included (0: nothing published yet).
SELECT sequence FROM publish.cursor WHERE singleton;

-- name: save_feed_page
INSERT INTO publish.feed_page (snapshot, part, body) VALUES ($1, $2, $3)
ON CONFLICT (snapshot, part) DO UPDATE SET body = EXCLUDED.body;

-- name: prune_feed
-- Pages of snapshots older than the newest $1 are in the site already: the database keeps no more.
DELETE FROM publish.feed_page WHERE snapshot <= (SELECT max(snapshot) FROM publish.feed_page) - $1;

-- name: feed_pages_after
SELECT snapshot, part, body FROM publish.feed_page WHERE snapshot > $1 ORDER BY snapshot, part;

-- name: feed_oldest
SELECT min(snapshot) FROM publish.feed_page;
