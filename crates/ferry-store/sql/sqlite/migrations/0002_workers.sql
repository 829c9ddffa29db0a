-- Worker processes, for GET /v1/workers. Refreshed by every heartbeat.
CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    node           TEXT NOT NULL,
    queues         TEXT NOT NULL,   -- JSON list of {name, concurrency}
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    running        INTEGER NOT NULL DEFAULT 0
);
