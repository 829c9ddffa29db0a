-- A soft timeout per attempt (SIGTERM before the hard timeout's SIGKILL), and the key
-- under which a kind may reuse a recent identical success (the `exec` result cache).
ALTER TABLE jobs ADD COLUMN soft_timeout_ms INTEGER;
ALTER TABLE jobs ADD COLUMN cache_key TEXT;
CREATE INDEX jobs_cache ON jobs (workspace, cache_key, finished_at)
    WHERE cache_key IS NOT NULL AND state = 'succeeded';
