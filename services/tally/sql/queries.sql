-- name: lock_chain_head
SELECT position, hash FROM tally.chain_head WHERE singleton FOR UPDATE;

-- name: set_chain_head
UPDATE tally.chain_head SET position = $1, hash = $2 WHERE singleton;

-- name: existing_for_keys
-- The stored submissions with exactly these keys, and the current version of each (tps, contest).
SELECT k.tps, k.contest, k.version, s.id, s.payload_sha256, s.outcome, s.failed_checks,
       s.chain_position, s.chain_hash, s.received_at, c.version AS current_version
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
INSERT INTO tally.photo (sha256, content_type, size, content)
SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::bytea[])
ON CONFLICT (sha256) DO NOTHING;

-- name: insert_alarms
INSERT INTO tally.alarm (kind, tps, contest, version, detail)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::jsonb[]);

-- name: device_keys
SELECT device_id, tps, public_key FROM tally.device
WHERE device_id = ANY($1::text[]) AND revoked_at IS NULL;

-- name: enroll_device
-- Enrolling the same key for the same TPS again is a no-op that returns the device.
INSERT INTO tally.device (device_id, tps, public_key, label) VALUES ($1, $2, $3, $4)
ON CONFLICT (device_id) DO UPDATE SET label = tally.device.label
RETURNING device_id, tps;

-- name: enroll_devices
-- enroll_device for many keys in one statement; the caller checks every returned TPS.
INSERT INTO tally.device (device_id, tps, public_key, label)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
ON CONFLICT (device_id) DO UPDATE SET label = tally.device.label
RETURNING device_id, tps;

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
-- For `suara audit verify`: the whole chain in order, with each signer's key and TPS (a LEFT JOIN, so a
-- row naming no enrolled device is reported rather than skipped).
SELECT s.id, s.chain_position, s.chain_hash, s.chain_version, s.payload, s.payload_sha256, s.signature,
       s.outcome, s.received_at, s.tps, s.contest, s.version, s.device_id, s.failed_checks, s.photo_sha256,
       d.public_key, d.tps AS device_tps
FROM tally.submission s LEFT JOIN tally.device d USING (device_id)
ORDER BY s.chain_position;

-- name: photo_hashes
-- For `suara audit verify`: every stored photo, to check its bytes still have the hash that names it.
SELECT sha256, content FROM tally.photo ORDER BY sha256;

-- name: chain_head
SELECT position, hash FROM tally.chain_head WHERE singleton;

-- name: photo
SELECT sha256, content_type, content FROM tally.photo WHERE sha256 = $1;

-- name: write_batch
-- Everything one group commit writes, in one statement (one round trip): the new
-- submissions, the outbox rows of those that became current, the current version
-- of each slot, and the chain head. Arrays are per row; failed_checks and
-- photo_sha256 travel comma-joined because unnest cannot carry arrays of arrays.
WITH new AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::bytea[], $7::bytea[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bytea[], $14::text[])
        AS n (id, tps, contest, version, payload, payload_sha256, signature,
              device_id, outcome, failed_checks, photo_sha256, chain_position, chain_hash, counts)
), submissions AS (
    INSERT INTO tally.submission (id, tps, contest, version, payload, payload_sha256, signature, device_id,
                                  outcome, failed_checks, photo_sha256, chain_position, chain_hash, received_at,
                                  chain_version)
    SELECT id, tps, contest, version, payload, payload_sha256, signature, device_id,
           outcome, string_to_array(failed_checks, ','), string_to_array(photo_sha256, ','),
           chain_position, chain_hash, $15::timestamptz, $22::smallint
    FROM new
), announced AS (
    INSERT INTO tally.outbox (submission_id, tps, contest, version, counts, quarantined, failed_checks)
    SELECT id, tps, contest, version, counts::jsonb, outcome = 'QUARANTINED', string_to_array(failed_checks, ',')
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
UPDATE tally.chain_head SET position = $20, hash = $21 WHERE singleton;

-- name: relay_pending
-- The relay's next batch: the oldest undelivered rows, in arrival order (the
-- partial index outbox_pending holds only these). Not a high-water mark: a row
-- whose transaction commits late with a lower id is still picked up.
SELECT o.id, o.tps, o.contest, o.version, o.counts::text AS counts, o.quarantined, o.failed_checks,
       s.photo_sha256
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
