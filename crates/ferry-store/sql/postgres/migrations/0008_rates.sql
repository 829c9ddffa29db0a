-- Rates on label keys, set by a workspace for its own jobs (PUT /v1/limits/rates/{label}).
CREATE TABLE label_rates (
    workspace   text NOT NULL,
    label       text NOT NULL,
    rate        double precision NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (workspace, label)
);

-- The token bucket of every rate in use (ferry-store's `rate` module): a queue's
-- (`queue:NAME`) or one value of a workspace's rated label (`label:["ws","key","value"]`).
-- A missing bucket is a full one. Claimers lock the rows they spend from.
CREATE TABLE rate_buckets (
    bucket       text PRIMARY KEY,
    tokens       double precision NOT NULL,
    refilled_at  bigint NOT NULL
);
