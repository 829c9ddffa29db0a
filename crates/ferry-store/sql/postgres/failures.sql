-- The failed attempts' read on PostgreSQL (src/postgres/failures.rs); the SQLite version
-- is in sql/sqlite/failures.sql under the same name.

-- name: FAILURES
-- A workspace's `attempt_failed` events since $2, newest first, with their jobs' queue,
-- kind and breaker key (the target), at most $6. The partial index events_failed finds
-- the window's failures; each is joined to its job by primary key. $3 to $5 (queue,
-- kind, target) filter when not NULL. Differs from SQLite: the filters' parameters are
-- typed (`$3::text`: a NULL alone has no type here), no `INDEXED BY` (the planner picks
-- the partial index from `type = 'attempt_failed'`), and jsonb read as text.
SELECT e.job_id, e.at, j.queue, j.kind, j.breaker, e.data::text
FROM events e
JOIN jobs j ON j.id = e.job_id
WHERE e.type = 'attempt_failed' AND e.at >= $2 AND j.workspace = $1
  AND ($3::text IS NULL OR j.queue = $3) AND ($4::text IS NULL OR j.kind = $4)
  AND ($5::text IS NULL OR j.breaker = $5)
ORDER BY e.at DESC
LIMIT $6
