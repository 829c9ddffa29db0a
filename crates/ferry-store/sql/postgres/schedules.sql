-- The schedules' statements on PostgreSQL (src/postgres/schedules.rs); the SQLite versions
-- are in sql/sqlite/schedules.sql under the same names.

-- name: SCHEDULE_COLUMNS
-- A schedule's columns, in the order `postgres/schedules.rs`'s `schedule` reads them.
id, workspace, name, spec, paused, next_fire_at, last_tick, last_start_kind, last_start, waiting_tick, started, skipped, refused, missed, last_error, created_by, created_at, updated_at

-- name: INSERT_SCHEDULE
-- A new schedule; nothing when its workspace has one of that name (no row changed).
INSERT INTO schedules (id, workspace, name, spec, paused, next_fire_at, created_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (workspace, name) DO NOTHING

-- name: LIST_SCHEDULES
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE workspace = $1 ORDER BY name

-- name: GET_SCHEDULE
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE workspace = $1 AND id = $2

-- name: LOCK_SCHEDULE
-- The schedule a firing holds, locked until the commit. Differs from SQLite (whose one
-- writer holds everything): FOR UPDATE, so that a racing firing waits here and then sees
-- the tick moved.
SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 FOR UPDATE

-- name: PAUSE_SCHEDULE
-- Pauses ($3 true: next_fire_at kept) or resumes ($3 false: next_fire_at $4, no tick waits).
UPDATE schedules
SET paused = $3,
    next_fire_at = CASE WHEN $3 THEN next_fire_at ELSE $4::bigint END,
    waiting_tick = CASE WHEN $3 THEN waiting_tick ELSE NULL END,
    updated_at = $5
WHERE workspace = $1 AND id = $2
RETURNING {SCHEDULE_COLUMNS}

-- name: DELETE_SCHEDULE
DELETE FROM schedules WHERE workspace = $1 AND id = $2

-- name: DUE_SCHEDULES
-- Unpaused schedules whose tick came by $1 (through the partial index schedules_due), or
-- with a tick waiting for its last start to end (few: a scan of the unpaused), soonest
-- first, at most $2.
SELECT {SCHEDULE_COLUMNS} FROM schedules
WHERE NOT paused AND (next_fire_at <= $1 OR waiting_tick IS NOT NULL)
ORDER BY next_fire_at
LIMIT $2

-- name: NEXT_TICK
-- The earliest tick after $1 of the unpaused schedules (schedules_due).
SELECT MIN(next_fire_at) FROM schedules WHERE NOT paused AND next_fire_at > $1

-- name: UPDATE_SCHEDULE
UPDATE schedules
SET next_fire_at = $2, last_tick = $3, last_start_kind = $4, last_start = $5, waiting_tick = $6,
    started = $7, skipped = $8, refused = $9, missed = $10, last_error = $11, updated_at = $12
WHERE id = $1

-- name: JOB_LIVE
-- Whether a job has not ended (the overlap policy's question).
SELECT 1 FROM jobs WHERE id = $1 AND state NOT IN ('succeeded', 'dead', 'cancelled')

-- name: RUN_LIVE
-- Whether a run has not ended.
SELECT 1 FROM runs WHERE id = $1 AND state IN ('running', 'queued')
