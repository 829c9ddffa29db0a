-- Makes the queue's due scheduled and retrying jobs ready. SKIP LOCKED: nodes promoting at
-- the same time share the work instead of waiting on each other.
WITH due AS (
    SELECT id FROM jobs
    WHERE queue = $1 AND state IN ('scheduled', 'retrying') AND run_at <= ferry_now()
    ORDER BY run_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'queued', updated_at = ferry_now()
FROM due WHERE jobs.id = due.id
