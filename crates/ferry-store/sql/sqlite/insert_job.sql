INSERT INTO jobs (id, workspace, user_id, kind, queue, state, priority, input, labels,
                  max_attempts, backoff, timeout_ms, total_timeout_ms, idempotency_key,
                  request_hash, created_at, run_at, deadline_at, updated_at, soft_timeout_ms, cache_key,
                  run_id, node_id, item, breaker, ordering_key)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?16, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
