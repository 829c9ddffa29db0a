-- Rates on label keys, set by a workspace for its own jobs (PUT /v1/limits/rates/{label}).
CREATE TABLE label_rates (
    workspace   TEXT NOT NULL,
    label       TEXT NOT NULL,
    rate        REAL NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (workspace, label)
);

-- The token bucket of every rate in use (ferry-store's `rate` module): a queue's
-- (`queue:NAME`) or one value of a workspace's rated label (`label:["ws","key","value"]`).
-- A missing bucket is a full one.
CREATE TABLE rate_buckets (
    bucket       TEXT PRIMARY KEY,
    tokens       REAL NOT NULL,
    refilled_at  INTEGER NOT NULL
);
