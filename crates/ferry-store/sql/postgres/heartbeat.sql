-- Renews, in one statement, the leases of the jobs the worker says it runs. A job still
-- running under the worker but not in the list (the worker lost track of it) is not
-- renewed: its lease expires and the reaper retries it.
-- It never waits for a row lock: a job whose row another transaction holds (the worker's
-- own batched finish, most likely) is skipped, and reported as still the worker's when it
-- was so at the statement's snapshot; its lease is renewed at the next beat if it still
-- runs. Since this statement waits for nobody, it cannot be part of a deadlock with a
-- finish, whatever order either meets its rows in.
WITH mine AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE state = 'running' AND worker_id = $1 AND id = ANY($3)
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE jobs SET lease_expires_at = $2
    FROM mine WHERE jobs.id = mine.id
    RETURNING jobs.id
)
SELECT id FROM renewed
UNION ALL
SELECT id FROM jobs
WHERE state = 'running' AND worker_id = $1 AND id = ANY($3) AND id NOT IN (SELECT id FROM mine)
