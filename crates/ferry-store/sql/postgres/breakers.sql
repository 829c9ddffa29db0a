-- The circuit breakers' statements on PostgreSQL (src/postgres/breakers.rs); the SQLite
-- versions are in sql/sqlite/breakers.sql under the same names.

-- name: BREAKER_COLUMNS
-- A breaker's columns, in the order row::breaker reads them.
key, data, settings, changed_at, updated_at

-- name: MAKE_BREAKER
-- A breaker's row as new ($2: its state as JSON), unless it exists: processes that meet a
-- key for the first time at once then lock one row (SQLite's one writer needs no such step).
INSERT INTO breakers (key, state, data, settings, changed_at, updated_at)
VALUES ($1, 'closed', $2, NULL, $3, $3)
ON CONFLICT (key) DO NOTHING

-- name: LOCK_BREAKER
-- A breaker's row, locked until the commit: processes changing one breaker take turns.
SELECT {BREAKER_COLUMNS} FROM breakers WHERE key = $1 FOR UPDATE

-- name: SAVE_BREAKER
UPDATE breakers SET state = $2, data = $3, settings = $4, changed_at = $5, updated_at = $6 WHERE key = $1

-- name: LET_GO
-- The jobs a breaker held back, ready now (as a promotion of due jobs: no event; their
-- `breaker_wait` said why they waited). Uses jobs_breaker_waiting.
UPDATE jobs SET state = 'queued', run_at = $2, updated_at = $2
WHERE state = 'scheduled' AND breaker = $1
RETURNING queue

-- name: BREAKERS
-- Every breaker ($1 NULL), or one, by key.
SELECT {BREAKER_COLUMNS} FROM breakers WHERE $1::text IS NULL OR key = $1 ORDER BY key
