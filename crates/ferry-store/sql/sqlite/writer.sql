-- The writer thread's statements (sqlite/writer.rs): its group-commit transaction and
-- the settings it writes. PostgreSQL stamps the same writes with ferry_now(), the
-- database's clock, where SQLite binds the writer's time for the whole group.

-- name: BEGIN_GROUP
-- Opens a group's transaction, taking the write lock at once (PostgreSQL runs many transactions instead).
BEGIN IMMEDIATE

-- name: CHECKPOINT_TRUNCATE
-- Folds the WAL back into the database file on a clean stop.
PRAGMA wal_checkpoint(TRUNCATE)

-- name: SET_QUEUE_SETTINGS
-- Stores a queue's settings, stamped ?6, the writer's time (PostgreSQL's ferry_now()).
INSERT INTO queue_settings (name, concurrency, max_depth, rate, paused, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET
concurrency = excluded.concurrency, max_depth = excluded.max_depth, rate = excluded.rate,
paused = excluded.paused, updated_at = excluded.updated_at

-- name: DELETE_LABEL_RATE
-- Removes a workspace's rate for a label (before INSERT_LABEL_RATE sets a new one). As on PostgreSQL, `?n` for `$n`.
DELETE FROM label_rates WHERE workspace = ?1 AND label = ?2

-- name: INSERT_LABEL_RATE
-- Sets a workspace's rate for a label. As on PostgreSQL, `?n` for `$n`.
INSERT INTO label_rates (workspace, label, rate, updated_at) VALUES (?1, ?2, ?3, ?4)

-- name: SET_WORKSPACE_LIMITS
-- Stores a workspace's limits, stamped ?3, the writer's time (PostgreSQL's ferry_now()).
INSERT INTO workspace_limits (workspace, limits, updated_at) VALUES (?1, ?2, ?3)
ON CONFLICT (workspace) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at

-- name: UNREGISTER_WORKER
-- Forgets a worker. As on PostgreSQL, `?1` for `$1`.
DELETE FROM workers WHERE id = ?1

-- name: INSERT_TOKEN
-- Stores a new token (its hash only). As on PostgreSQL, `?n` for `$n`.
INSERT INTO tokens (id, workspace, user_id, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)

-- name: CLOSE_AUTH
-- Closes the store, from its first token on; 1 where PostgreSQL writes `true` (SQLite has no booleans).
UPDATE auth_state SET closed = 1

-- name: REVOKE_TOKEN
-- Revokes a workspace's token unless it already is. As on PostgreSQL, `?n` for `$n`.
UPDATE tokens SET revoked_at = ?3 WHERE id = ?1 AND workspace = ?2 AND revoked_at IS NULL

-- name: SET_QUEUE_SHARE
-- Stores a workspace's share of a queue, stamped ?5, the writer's time (PostgreSQL's ferry_now()).
INSERT INTO queue_shares (queue, workspace, paused, rate, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (queue, workspace) DO UPDATE SET
paused = excluded.paused, rate = excluded.rate, updated_at = excluded.updated_at

-- name: REOPEN
-- Opens a closed store again, 0 for PostgreSQL's `false`; the writer is alone, so no row is locked first (LOCK_AUTH_STATE).
UPDATE auth_state SET closed = 0 WHERE closed
