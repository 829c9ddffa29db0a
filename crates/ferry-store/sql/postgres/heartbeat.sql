-- Renews every lease a worker holds, in one statement however many jobs it runs.
UPDATE jobs SET lease_expires_at = $2
WHERE state = 'running' AND worker_id = $1
RETURNING id
