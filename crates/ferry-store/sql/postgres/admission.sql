-- Statements of admission on PostgreSQL (src/postgres/admission.rs). The SQLite versions
-- are in sql/sqlite/admission.sql under the same names. Many processes admit at once
-- here: counts that decide take advisory locks first (SQLite's one writer needs none).

-- name: DEPTH_LOCK
-- Submissions to a queue near its max_depth take turns until the commit.
SELECT pg_advisory_xact_lock(hashtext('ferry-depth:' || $1))

-- name: HOLD_JOBS
-- A batch's new jobs held: inserted, then moved before the commit, so that no worker ever
-- sees them queued (SQLite inserts them held).
UPDATE jobs SET state = 'held' WHERE id = ANY($1)

-- name: HELD_COUNT
SELECT COUNT(*) FROM jobs WHERE workspace = $1 AND state = 'held'

-- name: ADMISSION_LOCK
-- Admissions of one workspace's runs or jobs ($1: `runs` or `jobs`) take turns until the
-- commit, so that a count and the insert it allows never race another.
SELECT pg_advisory_xact_lock(hashtext('ferry-admit:' || $1 || ':' || $2))

-- name: RUNS_IN_FLIGHT
-- The workspace's and the user's running runs, in one pass over the workspace's part of
-- the index (SQLite: SUM of a comparison instead of FILTER).
SELECT COUNT(*), COUNT(*) FILTER (WHERE user_id = $2) FROM runs WHERE workspace = $1 AND state = 'running'

-- name: JOBS_IN_FLIGHT
-- The workspace's and the user's unfinished standalone jobs (as RUNS_IN_FLIGHT).
SELECT COUNT(*), COUNT(*) FILTER (WHERE user_id = $2) FROM jobs WHERE workspace = $1 AND run_id IS NULL
    AND state IN ('queued', 'scheduled', 'running', 'retrying')

-- name: COUNT_WAITING
-- The queue's waiting jobs (queued, scheduled, retrying), counted up to $2 at most
-- through the partial index of each state (subqueries need an alias here, not in SQLite).
SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'queued' LIMIT $2) q)
     + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = $1
                               AND state IN ('scheduled', 'retrying') LIMIT $2) d)

-- name: STORED_UNDER_KEYS
-- The jobs stored under a batch's idempotency keys, in one statement (SQLite reads key by
-- key: its writer has no round trips to save).
SELECT j.workspace, j.idempotency_key, j.id, j.state, j.request_hash
FROM jobs j JOIN UNNEST($1::text[], $2::text[]) AS k(workspace, key)
  ON j.workspace = k.workspace AND j.idempotency_key = k.key
