-- Reads shared by PostgreSQL's modules (postgres/rows.rs). The batch inserts are
-- insert_jobs.sql and insert_events.sql.

-- name: JOB_EVENTS
-- A job's log, in order; `data::text` reads the jsonb column as text, which SQLite stores already.
SELECT id, at, type, data::text FROM events WHERE job_id = $1 ORDER BY id
