-- Ends a running attempt, fenced by its attempt number: a stale worker changes nothing.
UPDATE jobs
SET state = ?3, output = ?4, error = ?5, finished_at = ?6, run_at = COALESCE(?7, run_at),
    attempt_base = attempt_base + ?8, worker_id = NULL, lease_expires_at = NULL,
    updated_at = ?9, breaker = COALESCE(?10, breaker)
WHERE id = ?1 AND state = 'running' AND attempt = ?2
