-- A workspace's rate on its share of a queue (PUT /v1/queues/{name} {"rate": …} by the
-- workspace's admin): attempts of the workspace's jobs on the queue started per second,
-- across every worker process, through a token bucket of its own (see `rate.rs`). NULL:
-- no rate of the workspace's own; the queue's rate, if any, still holds.
ALTER TABLE queue_shares ADD COLUMN rate DOUBLE PRECISION;
