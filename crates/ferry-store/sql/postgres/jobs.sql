-- Statements of single jobs on PostgreSQL (src/postgres/jobs.rs). The SQLite versions are
-- in sql/sqlite/jobs.sql under the same names.

-- name: LOCK_JOB
-- A job's state, attempt, queue, kind, workspace and ordering key, of workspace $2 unless
-- it is NULL, locked until the commit: concurrent moves of one job take turns here
-- (SQLite's one writer needs no lock).
SELECT state, attempt, queue, kind, workspace, ordering_key FROM jobs
WHERE id = $1 AND ($2::text IS NULL OR workspace = $2)
FOR UPDATE

-- name: CANCEL_JOB
-- The cancelled state, with the error $2 (JSON text cast to jsonb; SQLite stores text).
UPDATE jobs SET state = 'cancelled', error = $2::jsonb, finished_at = $3, worker_id = NULL,
    lease_expires_at = NULL, updated_at = $3
WHERE id = $1

-- name: REQUEUE_JOB
-- A replay: queued again now, the attempts so far no longer counting against its limit,
-- its total timeout starting again.
UPDATE jobs SET state = 'queued', run_at = $2, attempt_base = attempt,
    deadline_at = CASE WHEN total_timeout_ms IS NULL THEN NULL ELSE $2 + total_timeout_ms * 1000 END,
    error = NULL, output = NULL, finished_at = NULL, updated_at = $2
WHERE id = $1
RETURNING queue

-- name: DELETE_JOB_EVENTS
DELETE FROM events WHERE job_id = $1

-- name: DELETE_JOB
DELETE FROM jobs WHERE id = $1

-- name: HELD_WORKSPACES
-- The workspaces a release pass looks at, each then in a transaction of its own.
SELECT DISTINCT workspace FROM jobs WHERE state = 'held' LIMIT 100

-- name: HELD_JOBS
-- A workspace's held jobs, oldest first, for one release pass. Read before the admission
-- lock: UNHOLD_JOB checks the state again.
SELECT id, user_id, queue, run_at FROM jobs WHERE workspace = $1 AND state = 'held' ORDER BY id LIMIT 1000

-- name: UNHOLD_JOB
-- A held job released: queued, or scheduled if it is not due yet.
UPDATE jobs SET state = $2, run_at = $3, updated_at = $4 WHERE id = $1 AND state = 'held'

-- name: CACHED_OUTPUT
-- The newest output stored under a cache key since $3.
SELECT id, output::text FROM jobs
WHERE workspace = $1 AND cache_key = $2 AND state = 'succeeded' AND finished_at >= $3 AND output IS NOT NULL
ORDER BY finished_at DESC
LIMIT 1

-- name: JOB_EXISTS
SELECT 1 FROM jobs WHERE id = $1 AND workspace = $2

-- name: JOB_COLUMNS
-- A job's columns, in the order row::job reads them; the jsonb ones as text (SQLite
-- stores text).
id, workspace, user_id, kind, queue, state, priority, input::text, labels::text, max_attempts,
backoff::text, timeout_ms, total_timeout_ms, idempotency_key, created_at, run_at, deadline_at, attempt,
attempt_base, worker_id, lease_expires_at, finished_at, updated_at, output::text, error::text, soft_timeout_ms, breaker, ordering_key

-- name: GET_JOB
SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND workspace = $2

-- name: LIST_JOBS
-- A page of a workspace's jobs, newest first, with the filters given, whose parameters
-- (then the limit's) are numbered in turn.
SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = $1{filters} ORDER BY id DESC LIMIT {limit}

-- name: ORDER_AHEAD
-- The unfinished jobs of workspace $1 under ordering key $2 submitted before job $3: the
-- oldest (the key's head) and the nearest, NULL when there is none. Uses jobs_ordered.
SELECT (SELECT id FROM jobs WHERE workspace = $1 AND ordering_key = $2 AND id < $3
          AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id LIMIT 1),
       (SELECT id FROM jobs WHERE workspace = $1 AND ordering_key = $2 AND id < $3
          AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id DESC LIMIT 1)

-- name: ORDER_GO
-- The head of workspace $1's ordering key $2 (its oldest unfinished job), ready now if it
-- waits as an attempt held back left it (`scheduled` after an attempt: a job delayed at
-- submission has none, and keeps its time). As a promotion of due jobs: no event; its
-- `order_wait` said why it waited. Concurrent calls move it once; the second finds it
-- queued. Uses jobs_ordered.
UPDATE jobs SET state = 'queued', run_at = $3, updated_at = $3
WHERE id = (SELECT id FROM jobs WHERE workspace = $1 AND ordering_key = $2
              AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id LIMIT 1)
  AND state = 'scheduled' AND attempt > 0
RETURNING id, queue
