-- Statements of admission on SQLite (src/sqlite/admission.rs). The PostgreSQL versions
-- are in sql/postgres/admission.sql under the same names.

-- name: STORED_UNDER_KEY
-- The job stored under one idempotency key of the workspace. Key by key: the writer
-- reads without a round trip (PostgreSQL finds the whole batch's keys in one statement).
SELECT id, state, request_hash FROM jobs WHERE workspace = ?1 AND idempotency_key = ?2

-- name: HELD_COUNT
SELECT COUNT(*) FROM jobs WHERE workspace = ?1 AND state = 'held'

-- name: HELD_WORKSPACES
-- The workspaces a release pass looks at.
SELECT DISTINCT workspace FROM jobs WHERE state = 'held' LIMIT 100

-- name: COUNT_WAITING
-- The queue's waiting jobs (queued, scheduled, retrying), counted up to ?2 at most
-- through the partial index of each state.
SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'queued' LIMIT ?2))
     + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1
                               AND state IN ('scheduled', 'retrying') LIMIT ?2))

-- name: RUNS_IN_FLIGHT
-- The workspace's and the user's running runs, in one pass over the workspace's part of
-- the index. SUM of a comparison here; PostgreSQL says COUNT(*) FILTER (WHERE …).
SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM runs WHERE workspace = ?1 AND state = 'running'

-- name: JOBS_IN_FLIGHT
-- The workspace's and the user's unfinished standalone jobs (as RUNS_IN_FLIGHT). The
-- states are named as jobs_inflight's condition names them (migration 0020), so that
-- SQLite sees the index covers the query.
SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM jobs WHERE workspace = ?1 AND run_id IS NULL
    AND (state = 'queued' OR state = 'scheduled' OR state = 'running' OR state = 'retrying')
