-- Renews, in one statement, the leases of the jobs the worker says it runs. A job still
-- running under the worker but not in the list (the worker lost track of it) is not
-- renewed: its lease expires and the reaper retries it.
UPDATE jobs SET lease_expires_at = $2
WHERE state = 'running' AND worker_id = $1 AND id = ANY($3)
RETURNING id
