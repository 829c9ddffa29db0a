-- Old finished jobs, oldest first. Ids are UUIDv7, so `id < ?1` (the first id of the
-- retention cut-off's millisecond) is a range scan of the primary key: no index on
-- finished_at has to be kept up to date on every finish just for pruning. A node job of a
-- run that still runs is kept: the run may still read its output.
SELECT id FROM jobs
WHERE id < ?1 AND state IN ('succeeded', 'cancelled') AND finished_at < ?2
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = jobs.run_id AND r.state = 'running')
ORDER BY id
LIMIT ?3
