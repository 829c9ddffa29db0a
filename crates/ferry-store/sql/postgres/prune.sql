-- Deletes old finished jobs and their events, oldest first, in one small batch. As in
-- SQLite, `id < $1` is a primary-key range scan (ids are UUIDv7), so no index on
-- finished_at is kept just for this. SKIP LOCKED lets several nodes prune at once.
WITH doomed AS (
    SELECT id FROM jobs
    WHERE id < $1 AND state IN ('succeeded', 'cancelled') AND finished_at < $2
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = jobs.run_id AND r.state = 'running')
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM events WHERE job_id IN (SELECT id FROM doomed)
)
DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)
RETURNING id
