-- Leases up to $2 ready jobs of queue $1 to worker $3 for $4 microseconds, and logs their
-- `started` events, in one statement (one round trip, atomic without BEGIN/COMMIT).
-- Unlike SQLite (one writer), many nodes claim at once here: FOR UPDATE SKIP LOCKED makes
-- each take rows nobody else has locked, so no job is handed out twice and no claimer
-- waits. The CTE form keeps the locking subquery from being evaluated more than once.
-- The start time is read inside the statement, after its snapshot, so it is never before
-- the creation of a job the statement can see.
-- This is the claim of a queue no rate applies to, and it checks that itself: the caller
-- chose it from the rates it read (through a cache, on another connection), and a rate
-- set between that read and this statement must not let the statement start jobs past
-- it. Once any rate is in force this claims nothing and the caller reads the rates again
-- (SQLite reads them and claims in one writer transaction, so it needs no such check).
-- `{commit}` is empty inside another transaction (a submission running a parked claim),
-- and on its own `, set_config('synchronous_commit', 'off', true)`: the claim's commit
-- does not wait for the WAL to reach the disk (it is flushed within wal_writer_delay, and
-- by the next commit that waits, such as the job's finish or heartbeat). Only a crash of
-- the database itself can lose such a claim, and then the job is ready again and runs
-- again, as after a lost worker: no acknowledged job is lost. Claims and finishes were
-- each about half the time waiting on WAL flushes while a deep queue drained.
-- `{after}` is empty, or (the claim from a deep queue's head, see `postgres/head.rs`)
-- `AND priority = $5 AND (run_at, id) > ($6, $7)`: an index range that starts after the
-- last job this process took, past the dead index entries of the jobs claimed before it.
WITH picked AS (
    SELECT id FROM jobs
    WHERE queue = $1 AND state = 'queued' {after}
      AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = $1 AND paused)
      AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = $1 AND (paused OR rate > 0))
      AND NOT EXISTS (SELECT 1 FROM queue_shares WHERE queue = $1 AND rate > 0)
      AND NOT EXISTS (SELECT 1 FROM label_rates WHERE rate > 0)
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), clock AS (
    SELECT ferry_now() AS now {commit} FROM picked LIMIT 1
), claimed AS (
    UPDATE jobs
    SET state = 'running', attempt = attempt + 1, worker_id = $3, lease_expires_at = clock.now + $4,
        updated_at = clock.now
    FROM picked, clock WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.kind, jobs.queue, jobs.input::text AS input, jobs.attempt, jobs.attempt_base,
              jobs.max_attempts, jobs.backoff::text AS backoff, jobs.timeout_ms, jobs.deadline_at,
              jobs.run_at, jobs.soft_timeout_ms, jobs.workspace, jobs.cache_key, jobs.run_id, jobs.priority, jobs.breaker, jobs.ordering_key, jobs.user_id,
              clock.now
), logged AS (
    INSERT INTO events (job_id, at, type, data)
    SELECT id, now, 'started', jsonb_build_object('attempt', attempt, 'worker', $3::text)
    FROM claimed
    ORDER BY priority DESC, run_at, id
)
SELECT claimed.* FROM claimed
