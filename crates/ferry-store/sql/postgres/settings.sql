-- Run-time settings on PostgreSQL (postgres/settings.rs): workspace limits, queue settings
-- and shares, label rates, tokens and the closed-store flag.
-- `{TOKEN_COLUMNS}` marks where Rust puts in the token columns, a list both backends share.

-- name: SET_WORKSPACE_LIMITS
-- Stores a workspace's limits, stamped with ferry_now(), the database's clock, where SQLite binds the writer's time.
INSERT INTO workspace_limits (workspace, limits, updated_at) VALUES ($1, $2, ferry_now())
ON CONFLICT (workspace) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at

-- name: QUEUE_SETTINGS
-- Every queue's settings, by name. The same statement on SQLite.
SELECT name, concurrency, max_depth, rate, paused FROM queue_settings ORDER BY name

-- name: SET_QUEUE_SETTINGS
-- Stores a queue's settings, stamped with ferry_now(), the database's clock, where SQLite binds the writer's time.
INSERT INTO queue_settings (name, concurrency, max_depth, rate, paused, updated_at)
VALUES ($1, $2, $3, $4, $5, ferry_now()) ON CONFLICT (name) DO UPDATE SET
concurrency = excluded.concurrency, max_depth = excluded.max_depth, rate = excluded.rate,
paused = excluded.paused, updated_at = excluded.updated_at

-- name: QUEUE_SHARES
-- A workspace's shares of queues, by queue. As on SQLite, `$1` for `?1`.
SELECT queue, workspace, paused, rate FROM queue_shares WHERE workspace = $1 ORDER BY queue

-- name: SET_QUEUE_SHARE
-- Stores a workspace's share of a queue, stamped with ferry_now(), the database's clock, where SQLite binds the writer's time.
INSERT INTO queue_shares (queue, workspace, paused, rate, updated_at)
VALUES ($1, $2, $3, $4, ferry_now()) ON CONFLICT (queue, workspace) DO UPDATE SET
paused = excluded.paused, rate = excluded.rate, updated_at = excluded.updated_at

-- name: LABEL_RATES
-- A workspace's label rates, by label. As on SQLite, `$1` for `?1`.
SELECT label, rate FROM label_rates WHERE workspace = $1 ORDER BY label

-- name: DELETE_LABEL_RATE
-- Removes a workspace's rate for a label (before INSERT_LABEL_RATE sets a new one). As on SQLite, `$n` for `?n`.
DELETE FROM label_rates WHERE workspace = $1 AND label = $2

-- name: INSERT_LABEL_RATE
-- Sets a workspace's rate for a label. As on SQLite, `$n` for `?n`.
INSERT INTO label_rates (workspace, label, rate, updated_at) VALUES ($1, $2, $3, $4)

-- name: INSERT_TOKEN
-- Stores a new token (its hash only). As on SQLite, `$n` for `?n`.
INSERT INTO tokens (id, workspace, user_id, role, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)

-- name: CLOSE_AUTH
-- Closes the store, from its first token on; `true` where SQLite, which has no booleans, writes 1.
UPDATE auth_state SET closed = true

-- name: TOKENS_CHANGED
-- Tells every node, at the commit, to drop its cached view of tokens and of the closed flag (SQLite has one process).
SELECT pg_notify($1, '')

-- name: TOKENS
-- A workspace's tokens, oldest first. As on SQLite, `$1` for `?1`.
SELECT {TOKEN_COLUMNS} FROM tokens WHERE workspace = $1 ORDER BY created_at, id

-- name: REVOKE_TOKEN
-- Revokes a workspace's token unless it already is. As on SQLite, `$n` for `?n`.
UPDATE tokens SET revoked_at = $3 WHERE id = $1 AND workspace = $2 AND revoked_at IS NULL

-- name: TOKEN_BY_HASH
-- The unrevoked token of a hash. As on SQLite, `$1` for `?1`.
SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1 AND revoked_at IS NULL

-- name: ACTIVE_TOKENS
-- How many tokens are not revoked. The same statement on SQLite.
SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL

-- name: AUTH_CLOSED
-- The closed flag, or any unrevoked token: either keeps the store closed. The same statement on SQLite.
SELECT closed OR EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) FROM auth_state WHERE id = 1

-- name: LOCK_AUTH_STATE
-- The closed flag, its row locked so that a token's creation and a reopening take turns (SQLite's writer is alone).
SELECT closed FROM auth_state WHERE id = 1 FOR UPDATE

-- name: REOPEN
-- Opens the store again once LOCK_AUTH_STATE found it closed and no token remains; SQLite writes 0 `WHERE closed`.
UPDATE auth_state SET closed = false
