-- Leases the ready jobs $1 that a rated claim chose (ferry-store's `rate` module) to
-- worker $2 for $3 microseconds and logs their `started` events: claim.sql without the
-- picking, which the caller did (its candidates are locked by this transaction).
WITH clock AS (
    SELECT ferry_now() AS now
), claimed AS (
    UPDATE jobs
    SET state = 'running', attempt = attempt + 1, worker_id = $2, lease_expires_at = clock.now + $3,
        updated_at = clock.now
    FROM clock WHERE jobs.id = ANY($1) AND jobs.state = 'queued'
    RETURNING jobs.id, jobs.kind, jobs.queue, jobs.input::text AS input, jobs.attempt, jobs.attempt_base,
              jobs.max_attempts, jobs.backoff::text AS backoff, jobs.timeout_ms, jobs.deadline_at,
              jobs.run_at, jobs.soft_timeout_ms, jobs.workspace, jobs.cache_key, jobs.run_id, jobs.priority, jobs.breaker, jobs.ordering_key, jobs.user_id,
              clock.now
), logged AS (
    INSERT INTO events (job_id, at, type, data)
    SELECT id, now, 'started', jsonb_build_object('attempt', attempt, 'worker', $2::text)
    FROM claimed
    ORDER BY priority DESC, run_at, id
)
SELECT claimed.* FROM claimed
