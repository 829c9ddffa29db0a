-- Renews the lease of one job the worker says it runs (one statement per running job:
-- at most the worker's concurrency). A job the worker no longer runs is not renewed.
UPDATE jobs SET lease_expires_at = ?3
WHERE id = ?1 AND state = 'running' AND worker_id = ?2
