-- name: lock_head
-- Taken first by every applying transaction: appliers run one at a time, and
-- every later statement of the transaction (READ COMMITTED) sees what the
-- previous applier committed.
SELECT sequence, registry_load FROM aggregate.head WHERE singleton FOR UPDATE;

-- name: custom_plans
-- For the apply transaction only (SET LOCAL; sent without parameters, so as one
-- simple query). The batch's arrays decide the plan, not a generic plan of a
-- prepared statement; and the per-element sums of a batch of 1,000 TPS sort in
-- memory rather than spill to disk (as the default work_mem of 4MB makes them).
-- An applier sends its statements back to back and never waits on anything
-- else inside: one idle for 10 s has lost its client (an instance whose host
-- died, with no FIN to tell PostgreSQL), and ending it frees the head row for
-- the other instances rather than after TCP keepalive's hours.
SET LOCAL plan_cache_mode = force_custom_plan;
SET LOCAL work_mem = '64MB';
SET LOCAL idle_in_transaction_session_timeout = '10s';

-- name: set_head
UPDATE aggregate.head SET sequence = $1, registry_load = coalesce($2, registry_load) WHERE singleton;

-- name: head
SELECT sequence FROM aggregate.head WHERE singleton;

-- name: registry_load
SELECT coalesce(max(id), 0) FROM registry.load;

-- name: seed_areas
-- One row per (contest, area) holding at least one TPS where the contest is
-- held (a TPS takes part when its code starts with the contest's scope), with
-- tps_total; '' is nasional. Rows whose tps_total changed are stamped $1.
WITH held AS (
    SELECT c.id AS contest, t.code
    FROM registry.contest c JOIN registry.tps t ON starts_with(t.code, c.scope)
), counted AS (
    SELECT contest, left(code, n) AS area, count(*) AS tps_total
    FROM held CROSS JOIN unnest(ARRAY[0, 2, 4, 6, 10]) AS n
    GROUP BY 1, 2
), width AS (
    SELECT contest, count(*)::int AS n FROM registry.choice GROUP BY contest
), seeded AS (
    INSERT INTO aggregate.area_total AS a (contest, area, parent, votes, tps_total, changed_sequence, changed_at)
    SELECT k.contest, k.area,
           CASE length(k.area) WHEN 0 THEN NULL WHEN 2 THEN '' WHEN 4 THEN left(k.area, 2)
                               WHEN 6 THEN left(k.area, 4) ELSE left(k.area, 6) END,
           array_fill(0::bigint, ARRAY[coalesce(w.n, 0)]), k.tps_total, $1, $2
    FROM counted k LEFT JOIN width w USING (contest)
    ON CONFLICT (contest, area) DO UPDATE
        SET tps_total = EXCLUDED.tps_total, changed_sequence = EXCLUDED.changed_sequence,
            changed_at = EXCLUDED.changed_at
        WHERE a.tps_total <> EXCLUDED.tps_total
    RETURNING a.contest, a.area
), logged AS (
    INSERT INTO aggregate.change (sequence, contest, area) SELECT $1, contest, area FROM seeded
)
SELECT count(*) FROM seeded;

-- name: current_versions
-- What each TPS of a batch contributes now: its version decides the outcome, its numbers are what the
-- roll-up takes back out of every ancestor when a newer version replaces them.
SELECT r.tps, r.contest, r.version, r.quarantined, r.votes, r.suara_sah, r.suara_tidak_sah, r.suara_total,
       r.dpt, r.pengguna
FROM unnest($1::text[], $2::text[]) AS k (tps, contest)
JOIN aggregate.tps_result r USING (tps, contest);

-- name: any_feed
-- Whether any subtree is fed by another instance (federation); its areas then take the feed's values and
-- a batch is rolled up by recomputing the parents of what changed, not by adding differences.
SELECT EXISTS (SELECT 1 FROM aggregate.area_feed);

-- name: add_to_areas
-- The roll-up of a batch of TPS updates: each changed area ($1 contest, $2 area) gets the difference its
-- TPS made ($3 votes as array literals in the contest's choice order, then the sums and TPS counts), and is
-- stamped $11 and logged. The applier holds the head row lock, so no other batch moves these rows
-- meanwhile: adding the differences gives what recomputing from the children would.
WITH d AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                $8::bigint[], $9::bigint[], $10::bigint[])
        AS d (contest, area, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna,
              tps_reported, tps_quarantined)
), updated AS (
    UPDATE aggregate.area_total a
    SET votes = (SELECT array_agg(x + y ORDER BY i)
                 FROM unnest(a.votes, d.votes::bigint[]) WITH ORDINALITY AS e (x, y, i)),
        suara_sah = a.suara_sah + d.suara_sah, suara_tidak_sah = a.suara_tidak_sah + d.suara_tidak_sah,
        suara_total = a.suara_total + d.suara_total, dpt = a.dpt + d.dpt, pengguna = a.pengguna + d.pengguna,
        tps_reported = a.tps_reported + d.tps_reported, tps_quarantined = a.tps_quarantined + d.tps_quarantined,
        changed_sequence = $11, changed_at = $12
    FROM d
    WHERE a.contest = d.contest AND a.area = d.area
    RETURNING a.contest, a.area
), logged AS (
    INSERT INTO aggregate.change (sequence, contest, area) SELECT $11, contest, area FROM updated
)
SELECT count(*) FROM updated;

-- name: upsert_leaves
-- The guard `version < EXCLUDED.version` is what makes a replay harmless even
-- if the caller's view of the outcomes were wrong. Votes travel as array
-- literals because unnest cannot carry arrays of arrays (photos: comma-joined).
WITH k AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::text[], $6::text[],
                $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $14::text[], $15::text[])
        AS u (tps, contest, version, quarantined, failed_checks, votes,
              suara_sah, suara_tidak_sah, suara_total, dpt, pengguna, administrasi, photos)
), up AS (
    INSERT INTO aggregate.tps_result AS r (tps, contest, version, quarantined, failed_checks, votes,
                                           suara_sah, suara_tidak_sah, suara_total, dpt, pengguna,
                                           changed_sequence, changed_at, administrasi, photos)
    SELECT tps, contest, version, quarantined, string_to_array(failed_checks, ','), votes::bigint[],
           suara_sah, suara_tidak_sah, suara_total, dpt, pengguna, $12, $13, administrasi::jsonb,
           string_to_array(photos, ',')
    FROM k
    ON CONFLICT (tps, contest) DO UPDATE
        SET version = EXCLUDED.version, quarantined = EXCLUDED.quarantined,
            failed_checks = EXCLUDED.failed_checks, votes = EXCLUDED.votes,
            suara_sah = EXCLUDED.suara_sah, suara_tidak_sah = EXCLUDED.suara_tidak_sah,
            suara_total = EXCLUDED.suara_total, dpt = EXCLUDED.dpt, pengguna = EXCLUDED.pengguna,
            changed_sequence = EXCLUDED.changed_sequence, changed_at = EXCLUDED.changed_at,
            administrasi = EXCLUDED.administrasi, photos = EXCLUDED.photos
        WHERE r.version < EXCLUDED.version
    RETURNING r.tps, r.contest
), logged AS (
    INSERT INTO aggregate.change (sequence, contest, area) SELECT $12, contest, tps FROM up
)
SELECT tps, contest FROM up;

-- name: current_feed_versions
SELECT f.area, f.contest, f.version
FROM unnest($1::text[], $2::text[]) AS k (area, contest)
JOIN aggregate.area_feed f USING (area, contest);

-- name: upsert_feed
WITH k AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                $10::bigint[], $11::bigint[], $12::bigint[])
        AS u (area, contest, version, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna,
              tps_total, tps_reported, tps_quarantined)
)
INSERT INTO aggregate.area_feed AS f (area, contest, source, version, votes, suara_sah, suara_tidak_sah,
                                      suara_total, dpt, pengguna, tps_total, tps_reported, tps_quarantined,
                                      received_at)
SELECT area, contest, $13, version, votes::bigint[], suara_sah, suara_tidak_sah, suara_total, dpt, pengguna,
       tps_total, tps_reported, tps_quarantined, $14
FROM k
ON CONFLICT (area, contest) DO UPDATE
    SET source = EXCLUDED.source, version = EXCLUDED.version, votes = EXCLUDED.votes,
        suara_sah = EXCLUDED.suara_sah, suara_tidak_sah = EXCLUDED.suara_tidak_sah,
        suara_total = EXCLUDED.suara_total, dpt = EXCLUDED.dpt, pengguna = EXCLUDED.pengguna,
        tps_total = EXCLUDED.tps_total, tps_reported = EXCLUDED.tps_reported,
        tps_quarantined = EXCLUDED.tps_quarantined, received_at = EXCLUDED.received_at
    WHERE f.version < EXCLUDED.version
RETURNING f.contest, f.area;

-- name: known_areas
-- Which of these (contest, area) pairs have a row (the contest has TPS there), with how many.
SELECT a.contest, a.area, a.tps_total
FROM unnest($1::text[], $2::text[]) AS k (contest, area)
JOIN aggregate.area_total a USING (contest, area);

-- name: recompute_areas
-- Area rows ($1 contest, $2 area, one level at a time) from their children, and only those whose
-- values really change are written, stamped $3 at $4 and returned. A desa sums its TPS rows (a
-- quarantined TPS adds zero votes and counts in tps_quarantined); any other area sums its child area
-- rows; a fed area takes the feed's values. Each target finds children in one of the two tables only.
--
-- Each child becomes one vector: its votes, then suara_sah, suara_tidak_sah, suara_total, dpt,
-- pengguna, reported, quarantined, tps_total (8 more), so a single GROUP BY sums everything. A TPS
-- row's tps_total is NULL: a desa keeps its seeded tps_total unless it is fed. One aggregation chain,
-- no join between aggregates: the plan stays linear whatever the row estimates say (joined aggregates
-- under a nested loop took minutes once the tables were analyzed).
WITH t AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u (contest, area, id)
), kids AS MATERIALIZED (
    SELECT t.id, t.contest, t.area,
           CASE WHEN r.quarantined
                THEN array_fill(0::bigint, ARRAY[cardinality(r.votes) + 6]) || ARRAY[1, NULL]::bigint[]
                ELSE r.votes || ARRAY[r.suara_sah, r.suara_tidak_sah, r.suara_total, r.dpt, r.pengguna, 1, 0, NULL]
           END AS vec
    FROM t JOIN aggregate.tps_result r ON r.contest = t.contest AND r.desa = t.area
    UNION ALL
    SELECT t.id, t.contest, t.area,
           k.votes || ARRAY[k.suara_sah, k.suara_tidak_sah, k.suara_total, k.dpt, k.pengguna,
                            k.tps_reported, k.tps_quarantined, k.tps_total] AS vec
    FROM t JOIN aggregate.area_total k ON k.contest = t.contest AND k.parent = t.area
), summed AS MATERIALIZED (
    -- One grouped pass: every element of vec summed per target, then put back in order.
    -- Grouped by the target's number, not its text key: integer sorts, no collation.
    SELECT min(contest) AS contest, min(area) AS area, array_agg(v ORDER BY i) AS vec
    FROM (
        SELECT id, i, sum(v)::bigint AS v, min(contest) AS contest, min(area) AS area
        FROM kids CROSS JOIN unnest(vec) WITH ORDINALITY AS e (v, i)
        GROUP BY id, i
    ) per_element
    GROUP BY id
), new AS MATERIALIZED (
    SELECT s.contest, s.area,
           coalesce(f.votes, s.vec[1:n - 8]) AS votes,
           coalesce(f.suara_sah, s.vec[n - 7]) AS suara_sah,
           coalesce(f.suara_tidak_sah, s.vec[n - 6]) AS suara_tidak_sah,
           coalesce(f.suara_total, s.vec[n - 5]) AS suara_total,
           coalesce(f.dpt, s.vec[n - 4]) AS dpt,
           coalesce(f.pengguna, s.vec[n - 3]) AS pengguna,
           coalesce(f.tps_reported, s.vec[n - 2]) AS tps_reported,
           coalesce(f.tps_quarantined, s.vec[n - 1]) AS tps_quarantined,
           coalesce(f.tps_total, s.vec[n]) AS tps_total  -- NULL for an unfed desa: it keeps its own
    FROM summed s
    CROSS JOIN LATERAL (SELECT cardinality(s.vec) AS n) AS width
    LEFT JOIN aggregate.area_feed f ON f.contest = s.contest AND f.area = s.area
), updated AS (
    UPDATE aggregate.area_total a
    SET votes = n.votes, suara_sah = n.suara_sah, suara_tidak_sah = n.suara_tidak_sah,
        suara_total = n.suara_total, dpt = n.dpt, pengguna = n.pengguna,
        tps_total = coalesce(n.tps_total, a.tps_total),
        tps_reported = n.tps_reported, tps_quarantined = n.tps_quarantined,
        changed_sequence = $3, changed_at = $4
    FROM new n
    WHERE a.contest = n.contest AND a.area = n.area
      AND (a.votes, a.suara_sah, a.suara_tidak_sah, a.suara_total, a.dpt, a.pengguna,
           a.tps_total, a.tps_reported, a.tps_quarantined)
          IS DISTINCT FROM (n.votes, n.suara_sah, n.suara_tidak_sah, n.suara_total, n.dpt, n.pengguna,
                            coalesce(n.tps_total, a.tps_total), n.tps_reported, n.tps_quarantined)
    RETURNING a.contest, a.area
), logged AS (
    INSERT INTO aggregate.change (sequence, contest, area) SELECT $3, contest, area FROM updated
)
SELECT contest, area FROM updated;

-- name: area_row
SELECT * FROM aggregate.area_total WHERE contest = $1 AND area = $2;

-- name: area_name
SELECT name FROM registry.area WHERE code = $1;

-- name: child_areas
-- The registry's children of area $2 where contest $1 (scope $3) is held, with
-- their rows if they have any TPS of it.
SELECT r.code, r.name, a.votes, a.suara_sah, a.suara_tidak_sah, a.suara_total, a.dpt, a.pengguna,
       a.tps_total, a.tps_reported, a.tps_quarantined, a.changed_sequence
FROM registry.area r
LEFT JOIN aggregate.area_total a ON a.contest = $1 AND a.area = r.code
WHERE (CASE WHEN $2 = '' THEN r.parent IS NULL ELSE r.parent = $2 END)
  AND (starts_with(r.code, $3) OR starts_with($3, r.code))
ORDER BY r.code;

-- name: child_tps
SELECT t.code, r.version, r.quarantined, r.votes, r.suara_sah, r.suara_tidak_sah, r.suara_total, r.dpt,
       r.pengguna, r.changed_sequence, r.changed_at, r.failed_checks, r.administrasi::text AS administrasi, r.photos
FROM registry.tps t
LEFT JOIN aggregate.tps_result r ON r.tps = t.code AND r.contest = $1
WHERE t.desa = $2 AND starts_with(t.code, $3)
ORDER BY t.code;

-- name: tps_row
SELECT t.code, r.version, r.quarantined, r.votes, r.suara_sah, r.suara_tidak_sah, r.suara_total, r.dpt,
       r.pengguna, r.changed_sequence, r.changed_at, r.failed_checks, r.administrasi::text AS administrasi, r.photos
FROM registry.tps t
LEFT JOIN aggregate.tps_result r ON r.tps = t.code AND r.contest = $1
WHERE t.code = $2;

-- name: areas_rows
-- GetAreas: the rows of the requested areas ('' is nasional), with their names.
SELECT a.area AS code, coalesce(g.name, '') AS name, a.votes, a.suara_sah, a.suara_tidak_sah, a.suara_total,
       a.dpt, a.pengguna, a.tps_total, a.tps_reported, a.tps_quarantined, a.changed_sequence, a.changed_at
FROM aggregate.area_total a
LEFT JOIN registry.area g ON g.code = a.area
WHERE a.contest = $1 AND a.area = ANY($2::text[]);

-- name: areas_children
-- GetAreas: the child areas (holding TPS of the contest) of the requested areas above desa.
SELECT a.parent, a.area AS code, g.name, a.votes, a.suara_sah, a.suara_tidak_sah, a.suara_total,
       a.dpt, a.pengguna, a.tps_total, a.tps_reported, a.tps_quarantined, a.changed_sequence, a.changed_at
FROM aggregate.area_total a
JOIN registry.area g ON g.code = a.area
WHERE a.contest = $1 AND a.parent = ANY($2::text[])
ORDER BY a.area;

-- name: desas_tps
-- GetAreas: every TPS of the requested desa where the contest (scope $3) is held, with its current form.
SELECT t.desa, t.code, r.version, r.quarantined, r.votes, r.suara_sah, r.suara_tidak_sah, r.suara_total, r.dpt,
       r.pengguna, r.changed_sequence, r.changed_at, r.failed_checks, r.administrasi::text AS administrasi, r.photos
FROM registry.tps t
LEFT JOIN aggregate.tps_result r ON r.tps = t.code AND r.contest = $1
WHERE t.desa = ANY($2::text[]) AND starts_with(t.code, $3)
ORDER BY t.code;

-- name: current_recaps
-- The current (highest) recap of each of these areas that has one.
SELECT DISTINCT ON (area) area, version, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna
FROM aggregate.recap
WHERE contest = $1 AND area = ANY($2::text[])
ORDER BY area, version DESC;

-- name: log_change
-- A change that is not a roll-up (an accepted recap), so publish rewrites the area and its parent.
INSERT INTO aggregate.change (sequence, contest, area) SELECT $1, $2, unnest($3::text[])
ON CONFLICT DO NOTHING;

-- name: changes_since
SELECT sequence, contest, area FROM aggregate.change
WHERE sequence > $1
ORDER BY sequence, contest, area
LIMIT $2;

-- name: changes_of_sequence
SELECT sequence, contest, area FROM aggregate.change WHERE sequence = $1 ORDER BY contest, area;

-- name: keep_trace
-- A traced apply's context, kept with the sequence it took (migration 0006).
INSERT INTO aggregate.change_trace (sequence, traceparent) VALUES ($1, $2);

-- name: traces_between
-- The kept contexts of sequences $1 < sequence <= $2, the first $3 of them.
SELECT sequence, traceparent FROM aggregate.change_trace
WHERE sequence > $1 AND sequence <= $2
ORDER BY sequence
LIMIT $3;

-- name: official
-- Revoked officials too: a revoked key's recap is refused by name (and logged as an alarm), not as unknown.
SELECT official_id, area, role, public_key, revoked_at IS NOT NULL AS revoked
FROM aggregate.official WHERE official_id = $1;

-- name: enroll_official
INSERT INTO aggregate.official (official_id, area, role, public_key, label) VALUES ($1, $2, $3, $4, $5);

-- name: insert_recap
-- Nothing is returned when the key is taken: the caller then compares payloads (duplicate or conflict).
INSERT INTO aggregate.recap (id, area, contest, version, payload, payload_sha256, signature, official_id,
                             votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT ON CONSTRAINT recap_key DO NOTHING
RETURNING id;

-- name: recap_by_key
SELECT id, payload_sha256 FROM aggregate.recap WHERE area = $1 AND contest = $2 AND version = $3;

-- name: recap_current_version
SELECT max(version) FROM aggregate.recap WHERE area = $1 AND contest = $2;

-- name: recap_history
SELECT id, version, official_id, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna, received_at
FROM aggregate.recap WHERE area = $1 AND contest = $2 ORDER BY version;

-- name: area_digital
SELECT area, votes, suara_sah, suara_tidak_sah, suara_total, dpt, pengguna, tps_total, tps_reported, tps_quarantined
FROM aggregate.area_total WHERE contest = $1 AND area = $2;

-- name: mismatches_under
-- A page of the recapped areas at or under $2 whose current recap differs from their digital row, by
-- area after $3 ('' for the first page), $5 at most: those recap.py reconciles as MISMATCH (every TPS
-- counted), and with $4 also those still INCOMPLETE. Votes arrays are both in the contest's choice order.
WITH current AS (
    SELECT DISTINCT ON (r.area) r.area, r.version, r.votes, r.suara_sah, r.suara_tidak_sah, r.suara_total,
           r.dpt, r.pengguna
    FROM aggregate.recap r
    WHERE r.contest = $1 AND r.area LIKE $2 || '%' AND r.area > $3
    ORDER BY r.area, r.version DESC
)
SELECT c.area, c.version, c.votes, c.suara_sah, c.suara_tidak_sah, c.suara_total, c.dpt, c.pengguna,
       a.votes AS d_votes, a.suara_sah AS d_suara_sah, a.suara_tidak_sah AS d_suara_tidak_sah,
       a.suara_total AS d_suara_total, a.dpt AS d_dpt, a.pengguna AS d_pengguna, a.tps_total, a.tps_reported,
       a.tps_quarantined
FROM current c
JOIN aggregate.area_total a ON a.contest = $1 AND a.area = c.area
WHERE (c.votes, c.suara_sah, c.suara_tidak_sah, c.suara_total, c.dpt, c.pengguna)
      IS DISTINCT FROM (a.votes, a.suara_sah, a.suara_tidak_sah, a.suara_total, a.dpt, a.pengguna)
  AND ($4::boolean OR a.tps_reported >= a.tps_total)
ORDER BY c.area
LIMIT $5;

-- name: revoke_official
UPDATE aggregate.official SET revoked_at = now() WHERE official_id = $1 AND revoked_at IS NULL RETURNING area, role;

-- name: record_admin_action
INSERT INTO aggregate.admin_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4::jsonb) RETURNING id, at;

-- name: admin_log
SELECT id, at, actor, action, subject, detail::text AS detail FROM aggregate.admin_log ORDER BY id;
