-- Ends a batch of running attempts, `{rows}` a list of rows of ten parameters each, f's
-- columns in order (sqlite/batch.rs makes it for a few row counts; no job twice in one
-- list). Each attempt is fenced by its number: a stale worker changes nothing, and only
-- the ids of the jobs changed are returned.
-- A job its breaker held back (f.breaker, the breaker's key) whose breaker has closed
-- since is ready now instead: the close let the other waiting jobs go, and this one's
-- wait was decided before it.
WITH f (id, attempt, state, output, error, finished_at, run_at, base_inc, now, breaker) AS (VALUES {rows})
UPDATE jobs
SET state = CASE WHEN f.breaker IS NOT NULL AND EXISTS (SELECT 1 FROM breakers b WHERE b.key = f.breaker AND b.state = 'closed')
                 THEN 'queued' ELSE f.state END,
    output = f.output, error = f.error, finished_at = f.finished_at,
    run_at = CASE WHEN f.breaker IS NOT NULL AND EXISTS (SELECT 1 FROM breakers b WHERE b.key = f.breaker AND b.state = 'closed')
                  THEN f.now ELSE COALESCE(f.run_at, jobs.run_at) END,
    attempt_base = jobs.attempt_base + f.base_inc, worker_id = NULL, lease_expires_at = NULL,
    updated_at = f.now, breaker = COALESCE(f.breaker, jobs.breaker)
FROM f
WHERE jobs.id = f.id AND jobs.state = 'running' AND jobs.attempt = f.attempt
RETURNING jobs.id
