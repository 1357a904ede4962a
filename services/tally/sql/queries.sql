-- name: lock_chain_head
-- One chain's head: a commit writes into one chain, so commits into different chains do not wait.
SELECT position, hash FROM tally.chain_head WHERE chain = $1 FOR UPDATE;

-- name: chain_count
-- How many chains the election runs, and whether any form is stored yet (then it is fixed).
SELECT (SELECT chains FROM tally.chain_count WHERE singleton) AS chains,
       EXISTS (SELECT FROM tally.submission) AS stored;

-- name: set_chain_count
-- Before the first form only: K chains, each with an empty head (chain 0's row exists already).
WITH count AS (
    UPDATE tally.chain_count SET chains = $1 WHERE singleton AND NOT EXISTS (SELECT FROM tally.submission)
    RETURNING chains
), dropped AS (
    DELETE FROM tally.chain_head WHERE chain >= $1 AND EXISTS (SELECT FROM count)
)
INSERT INTO tally.chain_head (chain, position, hash)
SELECT g, 0, decode(repeat('00', 32), 'hex') FROM generate_series(1, $1 - 1) g
WHERE EXISTS (SELECT FROM count)
ON CONFLICT (chain) DO NOTHING;

-- name: existing_for_keys
-- The stored submissions with exactly these keys, and the current version of each (tps, contest).
SELECT k.tps, k.contest, k.version, s.id, s.payload_sha256, s.outcome, s.failed_checks,
       s.chain, s.chain_position, s.chain_hash, s.received_at, c.version AS current_version
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k (tps, contest, version)
LEFT JOIN tally.submission s USING (tps, contest, version)
LEFT JOIN tally.current c ON c.tps = k.tps AND c.contest = k.contest;

-- name: upsert_current
INSERT INTO tally.current (tps, contest, version, submission_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[])
ON CONFLICT (tps, contest) DO UPDATE
    SET version = EXCLUDED.version, submission_id = EXCLUDED.submission_id
    WHERE tally.current.version < EXCLUDED.version;

-- name: insert_photos
-- The bytes are already in the photo store; the row records that the photo arrived with a committed form.
INSERT INTO tally.photo (sha256, content_type, size)
SELECT * FROM unnest($1::text[], $2::text[], $3::integer[])
ON CONFLICT (sha256) DO NOTHING;

-- name: insert_alarms
INSERT INTO tally.alarm (kind, tps, contest, version, detail)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[]);

-- name: device_keys
-- Revoked devices too: a revoked device's form is refused by name (and raises an alarm), not as unknown.
SELECT device_id, tps, public_key, revoked_at IS NOT NULL AS revoked FROM tally.device
WHERE device_id = ANY($1::text[]);

-- name: enroll_devices
-- Enrolling the same key for the same TPS again is a no-op that returns the device; the caller
-- checks every returned TPS.
INSERT INTO tally.device (device_id, tps, public_key, label)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
ON CONFLICT (device_id) DO UPDATE SET label = tally.device.label
RETURNING device_id, tps;

-- name: lock_tps_devices
-- Serializes enrollments per TPS (in sorted order: no deadlock), so the cap on live devices holds
-- under concurrent enrollments.
SELECT pg_advisory_xact_lock(hashtextextended('suara.tally.device:' || tps, 0))
FROM (SELECT DISTINCT unnest($1::text[]) AS tps) t ORDER BY tps;

-- name: tps_over_device_cap
SELECT tps, count(*) AS live FROM tally.device
WHERE tps = ANY($1::text[]) AND revoked_at IS NULL
GROUP BY tps HAVING count(*) > $2 ORDER BY tps;

-- name: admin_by_token
SELECT id FROM tally.admin_credential WHERE token_sha256 = $1 AND revoked_at IS NULL;

-- name: insert_admin_credential
INSERT INTO tally.admin_credential (id, token_sha256, label) VALUES ($1, $2, $3);

-- name: submission_by_id
SELECT s.*, (c.submission_id IS NOT NULL) AS is_current
FROM tally.submission s
LEFT JOIN tally.current c ON c.submission_id = s.id
WHERE s.id = $1;

-- name: submissions_for_tps
-- A page of one TPS's submissions ($2: one contest, or '' for all), by the unique key: the rows after
-- ($3 contest, $4 version), or from the first when $3 is NULL; $5 rows at most.
SELECT s.*, (c.submission_id IS NOT NULL) AS is_current
FROM tally.submission s
LEFT JOIN tally.current c ON c.submission_id = s.id
WHERE s.tps = $1 AND ($2 = '' OR s.contest = $2)
  AND ($3::text IS NULL OR (s.contest, s.version) > ($3::text, $4::bigint))
ORDER BY s.contest, s.version
LIMIT $5;

-- name: chain_records
-- For `suara audit verify`: every chain in order, with each signer's key and TPS (a LEFT JOIN, so a
-- row naming no enrolled device is reported rather than skipped).
SELECT s.id, s.chain_position, s.chain_hash, s.chain_version, s.payload, s.payload_sha256, s.signature,
       s.outcome, s.received_at, s.tps, s.contest, s.version, s.device_id, s.failed_checks, s.photo_sha256,
       s.chain, d.public_key, d.tps AS device_tps
FROM tally.submission s LEFT JOIN tally.device d USING (device_id)
ORDER BY s.chain, s.chain_position;

-- name: photo_hashes
-- For `suara audit verify`: every stored photo, to check its bytes still have the hash that names it
-- (content is NULL for a photo whose bytes are in the photo store).
SELECT sha256, content FROM tally.photo ORDER BY sha256;

-- name: chain_heads
SELECT chain, position, hash FROM tally.chain_head ORDER BY chain;

-- name: photo
-- content is NULL unless the row predates the photo store (migration 0008): then the store has the bytes.
SELECT sha256, content_type, content FROM tally.photo WHERE sha256 = $1;

-- name: write_batch
-- Everything one group commit writes, in one statement (one round trip): the new
-- submissions, the outbox rows of those that became current, the current version
-- of each slot, and the chain head. Arrays are per row; failed_checks and
-- photo_sha256 travel comma-joined because unnest cannot carry arrays of arrays.
-- $23: the commit span's traceparent for the outbox rows (NULL when tracing is off); $24: the one
-- chain every row of the batch is linked into, whose head becomes ($20, $21).
WITH new AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::bytea[], $7::bytea[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bytea[], $14::text[])
        AS n (id, tps, contest, version, payload, payload_sha256, signature,
              device_id, outcome, failed_checks, photo_sha256, chain_position, chain_hash, counts)
), submissions AS (
    INSERT INTO tally.submission (id, tps, contest, version, payload, payload_sha256, signature, device_id,
                                  outcome, failed_checks, photo_sha256, chain_position, chain_hash, received_at,
                                  chain_version, chain)
    SELECT id, tps, contest, version, payload, payload_sha256, signature, device_id,
           outcome, string_to_array(failed_checks, ','), string_to_array(photo_sha256, ','),
           chain_position, chain_hash, $15::timestamptz, $22::smallint, $24::integer
    FROM new
), announced AS (
    INSERT INTO tally.outbox (submission_id, tps, contest, version, counts, quarantined, failed_checks, traceparent)
    SELECT id, tps, contest, version, counts::jsonb, outcome = 'QUARANTINED', string_to_array(failed_checks, ','),
           $23::text
    FROM new
    WHERE outcome <> 'SUPERSEDED'
    ORDER BY chain_position
), currents AS (
    INSERT INTO tally.current (tps, contest, version, submission_id)
    SELECT * FROM unnest($16::text[], $17::text[], $18::bigint[], $19::uuid[])
    ON CONFLICT (tps, contest) DO UPDATE
        SET version = EXCLUDED.version, submission_id = EXCLUDED.submission_id
        WHERE tally.current.version < EXCLUDED.version
)
UPDATE tally.chain_head SET position = $20, hash = $21 WHERE chain = $24;

-- name: relay_pending
-- The relay's next batch: the oldest undelivered rows, in arrival order (the
-- partial index outbox_pending holds only these). Not a high-water mark: a row
-- whose transaction commits late with a lower id is still picked up.
SELECT o.id, o.tps, o.contest, o.version, o.counts::text AS counts, o.quarantined, o.failed_checks,
       s.photo_sha256, o.traceparent
FROM tally.outbox o
JOIN tally.submission s ON s.id = o.submission_id
WHERE o.delivered_at IS NULL
ORDER BY o.id
LIMIT $1;

-- name: relay_mark_delivered
-- Exactly the rows aggregate confirmed, in one statement.
UPDATE tally.outbox SET delivered_at = now()
WHERE id = ANY($1::bigint[]) AND delivered_at IS NULL;

-- name: relay_try_lock
-- One active relay per database; the lock is the session's and goes with its connection.
SELECT pg_try_advisory_lock($1);

-- name: relay_undelivered
-- How many outbox rows the relay has yet to deliver (operators and `suara demo` wait on it).
SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL;

-- name: relay_metrics
-- The relay's gauges, sampled when Prometheus scrapes: rows pending (the partial index outbox_pending
-- holds only these), the age of the oldest (the first by id), and dead letters not handed back.
SELECT (SELECT count(*) FROM tally.outbox WHERE delivered_at IS NULL) AS pending,
       extract(epoch FROM now() - (SELECT created_at FROM tally.outbox WHERE delivered_at IS NULL
                                   ORDER BY id LIMIT 1))::float8 AS oldest_age_s,
       (SELECT count(*) FROM tally.dead_letter WHERE redelivered_at IS NULL) AS dead_letters;

-- name: revoke_device
-- The device's TPS when this revoked it; no row when it was unknown or already revoked.
UPDATE tally.device SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL RETURNING tps;

-- name: device_state
SELECT device_id, tps, revoked_at FROM tally.device WHERE device_id = $1;

-- name: revoke_admin_credential
UPDATE tally.admin_credential SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id;

-- name: record_admin_action
INSERT INTO tally.admin_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4::jsonb) RETURNING id, at;

-- name: admin_log
SELECT id, at, actor, action, subject, detail::text AS detail FROM tally.admin_log ORDER BY id;
-- name: relay_settle
-- After aggregate's reply: the rows it took ($1) are delivered; the rows set aside ($2, with their
-- reasons $3 and newline-joined bad fields $4) go to the dead letters, each with an alarm, and are
-- marked delivered too. One statement: a reply is settled whole or not at all.
WITH dead AS (
    INSERT INTO tally.dead_letter (outbox_id, tps, contest, version, reason, fields)
    SELECT o.id, o.tps, o.contest, o.version, d.reason, string_to_array(d.fields, E'\n')
    FROM unnest($2::bigint[], $3::text[], $4::text[]) AS d (id, reason, fields)
    JOIN tally.outbox o ON o.id = d.id
    ON CONFLICT (outbox_id) DO UPDATE
        SET reason = EXCLUDED.reason, fields = EXCLUDED.fields, dead_at = now(), redelivered_at = NULL,
            attempts = tally.dead_letter.attempts + 1
    RETURNING outbox_id, tps, contest, version, reason
), alarmed AS (
    INSERT INTO tally.alarm (kind, tps, contest, version, detail)
    SELECT 'dead_letter', tps, contest, version, jsonb_build_object('outbox_id', outbox_id, 'reason', reason)
    FROM dead
)
UPDATE tally.outbox SET delivered_at = now()
WHERE id = ANY($1::bigint[] || $2::bigint[]) AND delivered_at IS NULL;

-- name: dead_letters
-- The dead letters, oldest first: only those not redelivered yet unless $1.
SELECT outbox_id, tps, contest, version, reason, fields, attempts, dead_at, redelivered_at
FROM tally.dead_letter
WHERE $1::boolean OR redelivered_at IS NULL
ORDER BY outbox_id;

-- name: dead_letters_redeliver
-- Hand dead letters back to the relay: these outbox ids ($1), or every one not redelivered yet
-- when $1 is NULL. Returns the ids handed back.
WITH chosen AS (
    UPDATE tally.dead_letter SET redelivered_at = now()
    WHERE redelivered_at IS NULL AND ($1::bigint[] IS NULL OR outbox_id = ANY($1::bigint[]))
    RETURNING outbox_id
)
UPDATE tally.outbox o SET delivered_at = NULL
FROM chosen WHERE o.id = chosen.outbox_id
RETURNING o.id;

-- name: stored_photos
-- Every photo whose bytes are in the photo store: what `suara rehearsal wipe` removes from it.
SELECT sha256 FROM tally.photo WHERE content IS NULL ORDER BY sha256;
