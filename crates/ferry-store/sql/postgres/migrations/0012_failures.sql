-- The failed attempts of a time window (GET /v1/errors), newest first, without scanning
-- the whole event log: only `attempt_failed` events are in the index.
CREATE INDEX events_failed ON events (at) WHERE type = 'attempt_failed';
