-- Ends a running attempt, fenced by its attempt number: a stale worker changes nothing.
-- A job its breaker held back (?10, the breaker's key) whose breaker has closed since is
-- ready now instead: the close let the other waiting jobs go, and this one's wait was
-- decided before it.
UPDATE jobs
SET state = CASE WHEN ?10 IS NOT NULL AND EXISTS (SELECT 1 FROM breakers WHERE key = ?10 AND state = 'closed')
                 THEN 'queued' ELSE ?3 END,
    output = ?4, error = ?5, finished_at = ?6,
    run_at = CASE WHEN ?10 IS NOT NULL AND EXISTS (SELECT 1 FROM breakers WHERE key = ?10 AND state = 'closed')
                  THEN ?9 ELSE COALESCE(?7, run_at) END,
    attempt_base = attempt_base + ?8, worker_id = NULL, lease_expires_at = NULL,
    updated_at = ?9, breaker = COALESCE(?10, breaker)
WHERE id = ?1 AND state = 'running' AND attempt = ?2
