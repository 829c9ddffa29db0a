-- The PostgreSQL store's own statements (postgres.rs), and those its modules share.
-- Parameters are PostgreSQL's `$1`, `$2`…, where SQLite's statements write `?1`, `?2`….
-- `{schema}` marks what Rust puts in where a parameter cannot go.

-- name: LOCK_SCHEMA
-- Takes the session lock under which nodes starting together create the schema in turn.
SELECT pg_advisory_lock(hashtext('ferry-schema:' || $1))

-- name: CREATE_SCHEMA
-- The `schema` option's schema; its name (checked by valid_schema) is put in by Rust: an identifier cannot be a parameter.
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: UNLOCK_SCHEMA
-- Releases LOCK_SCHEMA's lock.
SELECT pg_advisory_unlock(hashtext('ferry-schema:' || $1))

-- name: NOTIFY
-- Sends payload $2 on channel $1, at the commit inside a transaction: queue wake-ups, cancellations, event streams.
SELECT pg_notify($1, $2)

-- name: CLOCK
-- The database's clock, in microseconds, so that leases and due times never depend on nodes' clocks agreeing.
SELECT ferry_now()

-- name: RUN_STATE
-- The state of a run of a workspace. As on SQLite, `$n` for `?n`.
SELECT state FROM runs WHERE id = $1 AND workspace = $2

-- name: WORKSPACE_LIMITS
-- A workspace's stored limits (JSON text). As on SQLite, `$1` for `?1`.
SELECT limits FROM workspace_limits WHERE workspace = $1

-- name: NEXT_DUE
-- When the next scheduled or retrying job of queue $1 comes due. As on SQLite, `$1` for `?1`.
SELECT min(run_at) FROM jobs WHERE queue = $1 AND state IN ('scheduled', 'retrying')

-- name: PING
-- Whether the database answers.
SELECT 1

-- name: SNAPSHOT_READ
-- Makes a run's reads one snapshot (SQLite's reads run in one read transaction already).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY
