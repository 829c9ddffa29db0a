-- Renews, in one statement, the leases of the jobs the worker says it runs. A job still
-- running under the worker but not in the list (the worker lost track of it) is not
-- renewed: its lease expires and the reaper retries it.
-- The rows are locked first, in id order, as finish.sql locks a batch's: two statements
-- that each lock several of the same jobs then wait for one another in one order, never
-- in a cycle (a deadlock). An UPDATE alone locks in whatever order its plan meets them.
WITH mine AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE state = 'running' AND worker_id = $1 AND id = ANY($3)
    ORDER BY id
    FOR UPDATE
)
UPDATE jobs SET lease_expires_at = $2
FROM mine WHERE jobs.id = mine.id
RETURNING jobs.id
