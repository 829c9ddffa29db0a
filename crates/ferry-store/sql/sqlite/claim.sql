-- Leases up to ?3 ready jobs of queue ?1 to worker ?4, in claim order (higher priority,
-- then oldest run_at). SQLite has one writer, so no row locking is needed: the writer
-- thread runs this inside its group-commit transaction. RETURNING gives no order
-- guarantee; the caller sorts.
-- Nothing of a paused queue is claimed, and jobs of a workspace that paused its share of
-- the queue are skipped: both pauses are read here, in the claiming statement, so they
-- hold from their commit for every claim, parked ones included. The subqueries do not
-- depend on the row: SQLite runs each once per statement, and the scan stays on
-- jobs_ready. The subquery picks rows by rowid (jobs_ready holds it), so the update
-- finds each row at once instead of through the id's index.
UPDATE jobs
SET state = 'running', attempt = attempt + 1, worker_id = ?4,
    lease_expires_at = ?5, updated_at = ?2
WHERE rowid IN (
    SELECT rowid FROM jobs
    WHERE queue = ?1 AND state = 'queued'
      AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = ?1 AND paused)
      AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = ?1 AND paused)
    ORDER BY priority DESC, run_at, id
    LIMIT ?3
)
RETURNING id, kind, queue, input, attempt, attempt_base, max_attempts, backoff,
          timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, breaker, ordering_key,
          user_id
