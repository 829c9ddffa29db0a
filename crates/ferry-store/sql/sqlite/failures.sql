-- The failed attempts' read on SQLite (src/sqlite/failures.rs); the PostgreSQL version
-- is in sql/postgres/failures.sql under the same name.

-- name: FAILURES
-- A workspace's `attempt_failed` events since ?2, newest first, with their jobs' queue,
-- kind and breaker key (the target), at most ?6. The partial index events_failed finds
-- the window's failures (newest first) without reading other events; each is joined to
-- its job by primary key. ?3 to ?5 (queue, kind, target) filter when not NULL.
SELECT e.job_id, e.at, j.queue, j.kind, j.breaker, e.data
FROM events e INDEXED BY events_failed
JOIN jobs j ON j.id = e.job_id
WHERE e.type = 'attempt_failed' AND e.at >= ?2 AND j.workspace = ?1
  AND (?3 IS NULL OR j.queue = ?3) AND (?4 IS NULL OR j.kind = ?4) AND (?5 IS NULL OR j.breaker = ?5)
ORDER BY e.at DESC
LIMIT ?6
