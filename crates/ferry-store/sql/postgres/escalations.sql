-- The escalation rules' statements on PostgreSQL (src/postgres/escalations.rs); the
-- SQLite versions are in sql/sqlite/escalations.sql under the same names.

-- name: SIGNAL_FAILURES
-- Every workspace's `attempt_failed` events since $1 but those of workspace $2 (the
-- escalation jobs'), newest first, at most $3, in the columns of the FAILURES read
-- (failures.sql) and the job's workspace. Differs from SQLite: no `INDEXED BY` (the
-- planner picks the partial index events_failed from the type), and jsonb read as text.
SELECT e.job_id, e.at, j.queue, j.kind, j.breaker, e.data::text, j.workspace
FROM events e
JOIN jobs j ON j.id = e.job_id
WHERE e.type = 'attempt_failed' AND e.at >= $1 AND j.workspace <> $2
ORDER BY e.at DESC
LIMIT $3

-- name: SIGNAL_DEAD
-- As SIGNAL_FAILURES, for the `dead` events (whose data holds the job's error too),
-- through the partial index events_dead.
SELECT e.job_id, e.at, j.queue, j.kind, j.breaker, e.data::text, j.workspace
FROM events e
JOIN jobs j ON j.id = e.job_id
WHERE e.type = 'dead' AND e.at >= $1 AND j.workspace <> $2
ORDER BY e.at DESC
LIMIT $3

-- name: SIGNAL_OPENED
-- The breakers open now that changed since $1 (they opened then), in BREAKERS' columns
-- (breakers.sql). A small table: no index.
SELECT key, data, settings, changed_at, updated_at FROM breakers
WHERE state = 'open' AND changed_at >= $1
ORDER BY key

-- name: RECORD_FIRING
-- The firing of rule $1 for group $2 at $3 (the evaluation's time) with job $4, unless
-- the group fired after $3 - $5 (its window, in microseconds): a row back means this
-- transaction fired. A
-- concurrent transaction that inserted or updated the row first makes this one wait for
-- its commit, then evaluate the condition on the row it committed (READ COMMITTED), so
-- of two nodes firing one group at once exactly one gets a row back.
INSERT INTO escalations (rule, grp, fired_at, job_id, fires) VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (rule, grp) DO UPDATE
    SET fired_at = excluded.fired_at, job_id = excluded.job_id, fires = escalations.fires + 1
    WHERE escalations.fired_at <= excluded.fired_at - $5
RETURNING fired_at

-- name: FORGET_FIRINGS
DELETE FROM escalations WHERE fired_at < $1
