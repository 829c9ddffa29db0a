-- Leases up to $3 ready jobs of queue $1 to worker $4. Unlike SQLite (one writer), many
-- nodes claim at once here: FOR UPDATE SKIP LOCKED makes each take rows nobody else has
-- locked, so no job is handed out twice and no claimer waits. The CTE form keeps the
-- locking subquery from being evaluated more than once.
WITH picked AS (
    SELECT id FROM jobs
    WHERE queue = $1 AND state = 'queued'
    ORDER BY priority DESC, run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs
SET state = 'running', attempt = attempt + 1, worker_id = $4, lease_expires_at = $5, updated_at = $2
FROM picked WHERE jobs.id = picked.id
RETURNING jobs.id, jobs.kind, jobs.queue, jobs.input::text, jobs.attempt, jobs.attempt_base,
          jobs.max_attempts, jobs.backoff::text, jobs.timeout_ms, jobs.deadline_at, jobs.run_at,
          jobs.priority
