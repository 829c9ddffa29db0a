-- Ends a batch of running attempts and logs their events, in one statement (one round
-- trip, atomic without BEGIN/COMMIT). Each attempt is fenced by its number: a row whose
-- job is no longer running under that number is left alone, and its events are dropped.
-- The events of a move to a later time (`retry_scheduled`, `breaker_wait`, `order_wait`) get that time
-- here, from the statement's clock; the rest of their data, and the others', comes
-- ready-made. A queue that got ready or retrying work is notified once.
-- It takes its rows' locks in whatever order its plan meets them: heartbeat.sql, the other
-- statement that locks several of a worker's running jobs, never waits for a lock (it
-- skips the rows a finish holds), so the two cannot wait for each other in a cycle. A
-- locking pass in id order here instead cost about a third of PostgreSQL's throughput.
-- A job its breaker held back (`breaker` set) whose breaker has closed since is ready now
-- instead: the close let the other waiting jobs go, and this one's wait was decided
-- before it. The breaker's row is read FOR SHARE, so a close (which holds it FOR UPDATE
-- from its start to its commit, where it lets the waiting jobs go) and such a finish take
-- turns: either the finish waits and reads the close, or the close's let-go, waiting,
-- finds this job scheduled. Read unlocked, a finish running beside a close missed both,
-- and its job waited a whole cool-down after the close. Only held-back jobs read it.
WITH clock AS (
    SELECT ferry_now() AS now
), u AS MATERIALIZED (
    SELECT u.*, u.breaker IS NOT NULL
                AND (SELECT b.state FROM breakers b WHERE b.key = u.breaker FOR SHARE) = 'closed' AS let_go
    FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::bigint[], $8::int[],
                $15::text[])
         AS u(id, attempt, state, output, error, finished, retry_in, base_inc, breaker)
), done AS (
    UPDATE jobs j
    SET state = CASE WHEN u.let_go THEN 'queued' ELSE u.state END,
        output = u.output::jsonb, error = u.error::jsonb,
        finished_at = CASE WHEN u.finished THEN clock.now END,
        run_at = CASE WHEN u.let_go THEN clock.now
                      WHEN u.retry_in IS NULL THEN j.run_at ELSE clock.now + u.retry_in END,
        attempt_base = j.attempt_base + u.base_inc,
        worker_id = NULL, lease_expires_at = NULL, updated_at = clock.now,
        breaker = COALESCE(u.breaker, j.breaker)
    FROM u, clock
    WHERE j.id = u.id AND j.state = 'running' AND j.attempt = u.attempt
    RETURNING j.id, u.attempt, j.queue, j.state, clock.now
), logged AS (
    INSERT INTO events (job_id, at, type, data)
    SELECT e.job_id, done.now, e.type,
           CASE WHEN e.type IN ('retry_scheduled', 'breaker_wait', 'order_wait')
                THEN e.data::jsonb || jsonb_build_object('run_at', ferry_rfc3339(done.now + e.retry_in),
                                                         'delay_ms', e.retry_in / 1000)
                ELSE e.data::jsonb END
    FROM UNNEST($9::uuid[], $10::int[], $11::text[], $12::text[], $13::bigint[]) WITH ORDINALITY
         AS e(job_id, attempt, type, data, retry_in, n)
    JOIN done ON done.id = e.job_id AND done.attempt = e.attempt
    ORDER BY e.n
), notified AS (
    SELECT pg_notify($14, q.queue) FROM (
        SELECT DISTINCT queue FROM done WHERE state IN ('retrying', 'queued')
    ) q
)
SELECT id, attempt FROM done, (SELECT count(*) FROM notified) n
