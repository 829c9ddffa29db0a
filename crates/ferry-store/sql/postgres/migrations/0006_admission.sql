-- Concurrency limits: what each workspace and user has in flight is counted at
-- admission through these partial indexes (runs until they end; standalone jobs until a
-- final state), and each workspace's own limits, when it set any.
CREATE INDEX runs_inflight ON runs (workspace, user_id) WHERE state = 'running';
-- Runs admitted with on_limit "queue", waiting for a slot in the order they came.
CREATE INDEX runs_queued ON runs (workspace, id) WHERE state = 'queued';
-- Standalone jobs held by on_limit "queue", likewise.
CREATE INDEX jobs_held ON jobs (workspace, id) WHERE state = 'held';
CREATE INDEX jobs_inflight ON jobs (workspace, user_id)
    WHERE run_id IS NULL AND state IN ('queued', 'scheduled', 'running', 'retrying');
CREATE TABLE workspace_limits (
    workspace   text PRIMARY KEY,
    limits      text NOT NULL,
    updated_at  bigint NOT NULL
);
