-- Statements of single jobs, workers and pruning on SQLite (src/sqlite/jobs.rs). The
-- PostgreSQL versions are in sql/postgres/jobs.sql under the same names.

-- name: WORKER_HEARTBEAT
-- A worker's liveness and how many attempts it runs.
UPDATE workers SET last_heartbeat = ?2, running = ?3 WHERE id = ?1

-- name: REGISTER_WORKER
-- A worker process announces itself (again, after a restart under the same id).
INSERT INTO workers (id, node, queues, started_at, last_heartbeat, running)
VALUES (?1, ?2, ?3, ?4, ?4, 0)
ON CONFLICT (id) DO UPDATE SET node = ?2, queues = ?3, last_heartbeat = ?4

-- name: PRUNABLE_RUNS
-- Ended runs older than the cut ($1: the id floor of the cut, so the primary key bounds
-- the scan), oldest first.
SELECT id FROM runs WHERE id < ?1 AND state != 'running' AND finished_at < ?2 ORDER BY id LIMIT ?3

-- name: DELETE_RUN_EVENTS
DELETE FROM run_events WHERE run_id = ?1

-- name: DELETE_RUN_NODES
DELETE FROM run_nodes WHERE run_id = ?1

-- name: DELETE_RUN
DELETE FROM runs WHERE id = ?1

-- name: PRUNE_WORKERS
-- Workers silent for a day.
DELETE FROM workers WHERE last_heartbeat < ?1

-- name: PRUNE_RATE_BUCKETS
-- Rate buckets nobody drew on for a while: a missing bucket starts full, as an idle one
-- would have refilled.
DELETE FROM rate_buckets WHERE refilled_at < ?1

-- name: LOCK_JOB
-- A job's state, attempt, queue, kind, workspace and ordering key, of workspace ?2 unless
-- it is NULL. A plain read: the writer holds the database (PostgreSQL locks the row with
-- FOR UPDATE).
SELECT state, attempt, queue, kind, workspace, ordering_key FROM jobs WHERE id = ?1 AND (?2 IS NULL OR workspace = ?2)

-- name: CANCEL_JOB
-- The cancelled state, with the error ?2 (JSON text; PostgreSQL casts it to jsonb).
UPDATE jobs SET state = 'cancelled', error = ?2, finished_at = ?3, worker_id = NULL,
    lease_expires_at = NULL, updated_at = ?3
WHERE id = ?1

-- name: REQUEUE_JOB
-- A replay: queued again now, the attempts so far no longer counting against its limit,
-- its total timeout starting again.
UPDATE jobs SET state = 'queued', run_at = ?2, attempt_base = attempt,
    deadline_at = CASE WHEN total_timeout_ms IS NULL THEN NULL ELSE ?2 + total_timeout_ms * 1000 END,
    error = NULL, output = NULL, finished_at = NULL, updated_at = ?2
WHERE id = ?1
RETURNING queue

-- name: DELETE_JOB_EVENTS
DELETE FROM events WHERE job_id = ?1

-- name: DELETE_JOB
DELETE FROM jobs WHERE id = ?1

-- name: HELD_JOBS
-- A workspace's held jobs, oldest first, for one release pass.
SELECT id, user_id, queue, run_at FROM jobs WHERE workspace = ?1 AND state = 'held' ORDER BY id LIMIT 1000

-- name: UNHOLD_JOB
-- A held job released: queued, or scheduled if it is not due yet.
UPDATE jobs SET state = ?2, run_at = ?3, updated_at = ?4 WHERE id = ?1 AND state = 'held'

-- name: ORDER_AHEAD
-- The unfinished jobs of workspace ?1 under ordering key ?2 submitted before job ?3: the
-- oldest (the key's head) and the nearest, NULL when there is none. Uses jobs_ordered.
SELECT (SELECT id FROM jobs WHERE workspace = ?1 AND ordering_key = ?2 AND id < ?3
          AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id LIMIT 1),
       (SELECT id FROM jobs WHERE workspace = ?1 AND ordering_key = ?2 AND id < ?3
          AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id DESC LIMIT 1)

-- name: ORDER_GO
-- The head of workspace ?1's ordering key ?2 (its oldest unfinished job), ready now if it
-- waits as an attempt held back left it (`scheduled` after an attempt: a job delayed at
-- submission has none, and keeps its time). As a promotion of due jobs: no event; its
-- `order_wait` said why it waited. Uses jobs_ordered.
UPDATE jobs SET state = 'queued', run_at = ?3, updated_at = ?3
WHERE id = (SELECT id FROM jobs WHERE workspace = ?1 AND ordering_key = ?2
              AND state NOT IN ('succeeded', 'dead', 'cancelled') ORDER BY id LIMIT 1)
  AND state = 'scheduled' AND attempt > 0
RETURNING id, queue
