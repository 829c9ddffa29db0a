-- The SQLite store's own statements (sqlite.rs), and those its modules share.
-- Parameters are SQLite's `?1`, `?2`…, where PostgreSQL's statements write `$1`, `$2`….
-- `{JOB_COLUMNS}`, `{CLAIMED_COLUMNS}` and `{TOKEN_COLUMNS}` mark where Rust puts in that
-- column list (the JOB_COLUMNS block; the other two are Rust constants it shares);
-- `{filters}` LIST_JOBS' optional conditions; `{sync}`, `{cache_kib}` and `{pages}`
-- settings (a PRAGMA takes no parameters).

-- name: WRITER_PRAGMAS
-- The writer's connection: WAL, the durability's synchronous mode, a modest page cache (WRITER_CACHE_KIB), temp in memory.
PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA cache_size = -{cache_kib};
PRAGMA temp_store = MEMORY;

-- name: WRITER_AUTOCHECKPOINT
-- How far the WAL may grow before the writer checkpoints by itself (the checkpoint thread usually has).
PRAGMA wal_autocheckpoint = {pages};

-- name: EXPIRE_ORPHANS
-- Expires the leases of jobs a crashed process left running, so the reaper retries them at once (SQLite has one process).
UPDATE jobs SET lease_expires_at = 0 WHERE state = 'running'

-- name: BEGIN_READ
-- Opens a read's transaction: a job and its events come from one snapshot (PostgreSQL's SNAPSHOT_READ).
BEGIN

-- name: COMMIT
-- Ends a read's or the writer's transaction.
COMMIT

-- name: ROLLBACK
-- Abandons a transaction that failed.
ROLLBACK

-- name: INSERT_EVENTS
-- Appends events to jobs' logs, `{rows}` a list of `(?, ?, ?, ?)` (job_id, at, type, data),
-- one for each (sqlite/log.rs); PostgreSQL appends a batch at once from arrays (insert_events.sql).
INSERT INTO events (job_id, at, type, data) VALUES {rows}

-- name: JOB_COLUMNS
-- A job's columns, in the order row::job reads them; PostgreSQL reads its jsonb columns as text (`::text`).
id, workspace, user_id, kind, queue, state, priority, input, labels, max_attempts,
backoff, timeout_ms, total_timeout_ms, idempotency_key, created_at, run_at, deadline_at, attempt,
attempt_base, worker_id, lease_expires_at, finished_at, updated_at, output, error, soft_timeout_ms, breaker, ordering_key

-- name: WORKERS
-- Workers seen since ?1, a cut-off from the process's clock; PostgreSQL computes it from ferry_now(), the database's.
SELECT id, node, queues, started_at, last_heartbeat, running FROM workers
WHERE last_heartbeat >= ?1 ORDER BY id

-- name: EXPIRED
-- Up to ?2 running jobs whose lease ran out by ?1, the process's clock (PostgreSQL's ferry_now()), oldest first.
SELECT {CLAIMED_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at < ?1
ORDER BY lease_expires_at LIMIT ?2

-- name: GET_JOB
-- A job of a workspace. As on PostgreSQL, `?n` for `$n`.
SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND workspace = ?2

-- name: CACHED_OUTPUT
-- The latest output of a workspace's job with cache key ?2 that succeeded since ?3. As on PostgreSQL, `?n` for `$n`.
SELECT id, output FROM jobs WHERE workspace = ?1 AND cache_key = ?2
AND state = 'succeeded' AND finished_at >= ?3 AND output IS NOT NULL ORDER BY finished_at DESC LIMIT 1

-- name: LIST_JOBS
-- A page of a workspace's jobs, newest first, with the filters given (each `AND column = ?`, its parameter in turn).
SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ?{filters} ORDER BY id DESC LIMIT ?

-- name: JOB_EXISTS
-- Whether a job of a workspace exists. As on PostgreSQL, `?n` for `$n`.
SELECT 1 FROM jobs WHERE id = ?1 AND workspace = ?2

-- name: RUN_STATE
-- The state of a run of a workspace. As on PostgreSQL, `?n` for `$n`.
SELECT state FROM runs WHERE id = ?1 AND workspace = ?2

-- name: WORKSPACE_LIMITS
-- A workspace's stored limits (JSON text). As on PostgreSQL, `?1` for `$1`.
SELECT limits FROM workspace_limits WHERE workspace = ?1

-- name: QUEUE_SETTINGS
-- Every queue's settings, by name. The same statement on PostgreSQL.
SELECT name, concurrency, max_depth, rate, paused FROM queue_settings ORDER BY name

-- name: QUEUE_SHARES
-- A workspace's shares of queues, by queue. As on PostgreSQL, `?1` for `$1`.
SELECT queue, workspace, paused, rate FROM queue_shares WHERE workspace = ?1 ORDER BY queue

-- name: LABEL_RATES
-- A workspace's label rates, by label. As on PostgreSQL, `?1` for `$1`.
SELECT label, rate FROM label_rates WHERE workspace = ?1 ORDER BY label

-- name: TOKENS
-- A workspace's tokens, oldest first. As on PostgreSQL, `?1` for `$1`.
SELECT {TOKEN_COLUMNS} FROM tokens WHERE workspace = ?1 ORDER BY created_at, id

-- name: TOKEN_BY_HASH
-- The unrevoked token of a hash. As on PostgreSQL, `?1` for `$1`.
SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL

-- name: ACTIVE_TOKENS
-- How many tokens are not revoked. The same statement on PostgreSQL.
SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL

-- name: AUTH_CLOSED
-- The closed flag, or any unrevoked token: either keeps it closed, so no race of reopen and a token's creation opens it.
SELECT closed OR EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) FROM auth_state WHERE id = 1

-- name: NEXT_DUE
-- When the next scheduled or retrying job of queue ?1 comes due. As on PostgreSQL, `?1` for `$1`.
SELECT min(run_at) FROM jobs WHERE queue = ?1 AND state IN ('scheduled', 'retrying')

-- name: PING
-- Whether the database answers.
SELECT 1
