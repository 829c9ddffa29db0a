-- Inserts new jobs, `{rows}` a list of rows of 26 parameters each, in the columns' order
-- (sqlite/batch.rs makes it for a few row counts); updated_at is bound as created_at.
INSERT INTO jobs (id, workspace, user_id, kind, queue, state, priority, input, labels,
                  max_attempts, backoff, timeout_ms, total_timeout_ms, idempotency_key,
                  request_hash, created_at, run_at, deadline_at, updated_at, soft_timeout_ms, cache_key,
                  run_id, node_id, item, breaker, ordering_key)
VALUES {rows}
