-- Completes insert_jobs.sql (the `ins` CTE before this) into one statement for a
-- submission: each new job's first event and one wake-up per queue it touched, in the
-- same round trip as the insert. Unlike SQLite, which writes the event from
-- `transition::submit_event`, the event is built here, like finish.sql's: `queued` with
-- the queue, or `scheduled` with the queue and the time it is due. A job skipped for its
-- idempotency key is not in `ins`, so it gets neither. $24 is the wake-up channel. The
-- payload (`postgres/head.rs`, `Wakeup`): the queue; then origin $26 for a queue in $25
-- (whose parked claims this transaction runs), so that the submitting store's own
-- listener skips it, or nothing; then, when ready jobs were added, their highest priority
-- and earliest due time, which tell a claimer whether they come before where its claims
-- of a deep queue start.
), logged AS (
    INSERT INTO events (job_id, at, type, data)
    SELECT ins.id, ins.created_at, ins.state,
           CASE WHEN ins.state = 'scheduled'
                THEN jsonb_build_object('queue', ins.queue, 'run_at', ferry_rfc3339(ins.run_at))
                ELSE jsonb_build_object('queue', ins.queue) END
    FROM ins
    ORDER BY ins.id
), woke AS (
    SELECT pg_notify($24, q.queue || E'\n' || CASE WHEN q.queue = ANY($25::text[]) THEN $26 ELSE '' END
                          || COALESCE(E'\n' || q.priority || E'\n' || q.run_at, ''))
    FROM (SELECT queue, MAX(priority) FILTER (WHERE state = 'queued') AS priority,
                 MIN(run_at) FILTER (WHERE state = 'queued') AS run_at
          FROM ins GROUP BY queue) q
)
SELECT ins.id, ins.state, ins.queue, ins.run_at, ins.created_at, (SELECT count(*) FROM woke) FROM ins
