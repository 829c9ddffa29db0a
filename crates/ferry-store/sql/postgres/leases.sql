-- Attempts ending and leases on PostgreSQL (postgres/leases.rs): workers, heartbeats,
-- expired leases and pruning. The finish and heartbeat themselves are finish.sql and
-- heartbeat.sql, the pruned jobs prune.sql. `{CLAIMED_COLUMNS}` marks where Rust puts in
-- that block.

-- name: REGISTER_WORKER
-- Registers a worker, or refreshes it, stamped with ferry_now(), the database's clock (SQLite's writer binds its time).
INSERT INTO workers (id, node, queues, started_at, last_heartbeat, running)
VALUES ($1, $2, $3::jsonb, ferry_now(), ferry_now(), 0)
ON CONFLICT (id) DO UPDATE SET node = $2, queues = $3::jsonb, last_heartbeat = ferry_now()

-- name: TOUCH_WORKER
-- A worker's heartbeat: when, and how many attempts it runs. As on SQLite, `$n` for `?n`.
UPDATE workers SET last_heartbeat = $2, running = $3 WHERE id = $1

-- name: UNREGISTER_WORKER
-- Forgets a worker. As on SQLite, `$1` for `?1`.
DELETE FROM workers WHERE id = $1

-- name: WORKERS
-- Workers seen within $1 microseconds of ferry_now(), the database's clock; SQLite binds a cut-off from its own.
SELECT id, node, queues::text, started_at, last_heartbeat, running FROM workers
WHERE last_heartbeat >= ferry_now() - $1 ORDER BY id

-- name: CLAIMED_COLUMNS
-- A claimed job's columns, in the order row::claimed reads them, then worker_id; jsonb read as text (SQLite stores text).
id, kind, queue, input::text, attempt, attempt_base, max_attempts, backoff::text,
timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, breaker, ordering_key, user_id, worker_id

-- name: EXPIRED
-- Up to $1 running jobs whose lease ran out by ferry_now(), the database's clock (SQLite binds its own), oldest first.
SELECT {CLAIMED_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at < ferry_now()
ORDER BY lease_expires_at LIMIT $1

-- name: PRUNE_RUNS
-- Up to $3 ended runs past the cut-off (ids below $1, finished before $2), SKIP LOCKED: nodes pruning at once take different runs.
SELECT id FROM runs WHERE id < $1 AND state != 'running' AND finished_at < $2
ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED

-- name: DELETE_RUN_EVENTS
-- The logs of the runs of the array $1, in one statement (SQLite deletes run by run).
DELETE FROM run_events WHERE run_id = ANY($1)

-- name: DELETE_RUN_NODES
-- The nodes of the runs of the array $1, in one statement (SQLite deletes run by run).
DELETE FROM run_nodes WHERE run_id = ANY($1)

-- name: DELETE_RUNS
-- The runs of the array $1, in one statement (SQLite deletes run by run).
DELETE FROM runs WHERE id = ANY($1)

-- name: PRUNE_WORKERS
-- Workers not seen since $1. As on SQLite, `$1` for `?1`.
DELETE FROM workers WHERE last_heartbeat < $1

-- name: PRUNE_RATE_BUCKETS
-- Rate buckets idle since $1 (a full bucket is the same as none). As on SQLite, `$1` for `?1`.
DELETE FROM rate_buckets WHERE refilled_at < $1
