-- name: migrated
-- The registry's schema exists (`suara db migrate` has run).
SELECT to_regclass('registry.load') IS NOT NULL;

-- name: tps_count
SELECT count(*) FROM registry.tps;

-- name: sample_tps
-- A random sample of TPS codes (the demo's polling stations).
SELECT code FROM registry.tps ORDER BY random() LIMIT $1;

-- name: area_exists
SELECT EXISTS (SELECT 1 FROM registry.area WHERE code = $1);

-- name: areas_by_level
SELECT level, count(*) AS areas FROM registry.area GROUP BY level;

-- name: tps_totals
SELECT count(*) AS tps, coalesce(sum(dpt), 0) AS dpt FROM registry.tps;

-- name: contest_summaries
SELECT c.id, c.name, c.scope, c.max_voters_per_tps, count(ch.id) AS choices,
       (SELECT count(*) FROM registry.district d WHERE d.contest = c.id) AS districts
FROM registry.contest c LEFT JOIN registry.choice ch ON ch.contest = c.id
GROUP BY c.id ORDER BY c.id;

-- name: last_load
SELECT id, loaded_at, synthetic_scale, seed, election_id, rehearsal FROM registry.load ORDER BY id DESC LIMIT 1;

-- name: election_id
-- The newest load that named an election names the registry's.
SELECT election_id FROM registry.load WHERE election_id IS NOT NULL ORDER BY id DESC LIMIT 1;

-- name: election
-- The election of the newest load that named one, and whether it is a rehearsal.
SELECT election_id, rehearsal FROM registry.load WHERE election_id IS NOT NULL ORDER BY id DESC LIMIT 1;
