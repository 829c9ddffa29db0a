-- Queue settings an admin changed at run time (PUT /v1/queues/{name}); they override the
-- configuration's. NULL keeps the configured value.
CREATE TABLE queue_settings (
    name         TEXT PRIMARY KEY,
    concurrency  INTEGER,
    max_depth    INTEGER,
    rate         REAL,
    paused       INTEGER NOT NULL DEFAULT 0,
    updated_at   INTEGER NOT NULL
);
