-- Reads shared by SQLite's modules (sqlite/rows.rs): the rates in force and job logs.

-- name: RATED_QUEUES
-- Queues with a rate. The same statement on PostgreSQL.
SELECT name, rate FROM queue_settings WHERE rate > 0

-- name: RATED_SHARES
-- Workspaces' shares of queues with a rate. The same statement on PostgreSQL.
SELECT queue, workspace, rate FROM queue_shares WHERE rate > 0

-- name: RATED_LABELS
-- Workspaces' labels with a rate. The same statement on PostgreSQL.
SELECT workspace, label, rate FROM label_rates WHERE rate > 0

-- name: JOB_EVENTS
-- A job's log, in order; the data is text already, where PostgreSQL reads its jsonb as text (`data::text`).
SELECT id, at, type, data FROM events WHERE job_id = ?1 ORDER BY id
