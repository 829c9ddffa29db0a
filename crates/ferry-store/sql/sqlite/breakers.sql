-- The circuit breakers' statements on SQLite (src/sqlite/breakers.rs); the PostgreSQL
-- versions are in sql/postgres/breakers.sql under the same names.

-- name: BREAKER_COLUMNS
-- A breaker's columns, in the order row::breaker reads them.
key, data, settings, changed_at, updated_at

-- name: LOCK_BREAKER
-- A breaker's row. SQLite's one writer holds everything already: no lock, and a missing
-- row is made by SAVE_BREAKER in the same transaction.
SELECT {BREAKER_COLUMNS} FROM breakers WHERE key = ?1

-- name: SAVE_BREAKER
INSERT INTO breakers (key, state, data, settings, changed_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (key) DO UPDATE SET state = excluded.state, data = excluded.data, settings = excluded.settings,
    changed_at = excluded.changed_at, updated_at = excluded.updated_at

-- name: LET_GO
-- The jobs a breaker held back, ready now (as a promotion of due jobs: no event; their
-- `breaker_wait` said why they waited). Uses jobs_breaker_waiting.
UPDATE jobs SET state = 'queued', run_at = ?2, updated_at = ?2
WHERE state = 'scheduled' AND breaker = ?1
RETURNING queue

-- name: BREAKERS
-- Every breaker (?1 NULL), or one, by key.
SELECT {BREAKER_COLUMNS} FROM breakers WHERE ?1 IS NULL OR key = ?1 ORDER BY key
