-- Makes the queue's due scheduled and retrying jobs ready. SKIP LOCKED: nodes promoting at
-- the same time share the work instead of waiting on each other. Answers how many it
-- promoted and how long until the queue's next scheduled or retrying job is due
-- (microseconds by the database's clock; NULL: none waits), which this process keeps so
-- that its claims skip this statement until then (see `postgres/due.rs`; SQLite
-- promotes in the writer's transaction, where it costs no round trip).
WITH due AS (
    SELECT id FROM jobs
    WHERE queue = $1 AND state IN ('scheduled', 'retrying') AND run_at <= ferry_now()
    ORDER BY run_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE jobs SET state = 'queued', updated_at = ferry_now()
    FROM due WHERE jobs.id = due.id
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM promoted) AS promoted,
       (SELECT MIN(run_at) FROM jobs
        WHERE queue = $1 AND state IN ('scheduled', 'retrying') AND run_at > ferry_now()) - ferry_now() AS next_in
