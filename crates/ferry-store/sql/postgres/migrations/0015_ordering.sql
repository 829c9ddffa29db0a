-- Ordered jobs (JobSpec.ordering_key): jobs of a workspace with one key run one at a time,
-- in id (submission) order. The index holds only the unfinished ones, so finding a job's
-- unfinished predecessors, and the key's head, is a short range however many of the key's
-- jobs have ended.
ALTER TABLE jobs ADD COLUMN ordering_key TEXT;
CREATE INDEX jobs_ordered ON jobs (workspace, ordering_key, id)
    WHERE ordering_key IS NOT NULL AND state NOT IN ('succeeded', 'dead', 'cancelled');
