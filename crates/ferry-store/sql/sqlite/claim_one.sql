-- Leases one ready job that a rated claim chose (ferry-store's `rate` module) to worker
-- ?3 until ?4; the same columns as claim.sql.
UPDATE jobs
SET state = 'running', attempt = attempt + 1, worker_id = ?3,
    lease_expires_at = ?4, updated_at = ?2
WHERE id = ?1 AND state = 'queued'
RETURNING id, kind, queue, input, attempt, attempt_base, max_attempts, backoff,
          timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, breaker, ordering_key,
          user_id
