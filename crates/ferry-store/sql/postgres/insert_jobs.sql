-- Inserts a batch of jobs from parallel arrays (one round trip however many). A job whose
-- run_at is in the future is `scheduled`, any other `queued` and due now. A job whose
-- idempotency key exists already is skipped (ON CONFLICT DO NOTHING waits for a
-- concurrent insert of the same key to commit first) and is absent from RETURNING.
-- $1 is the transaction's clock; NULL reads it here (one round trip less for a
-- submission that needs it no earlier), and RETURNING gives it back as created_at.
WITH clock AS MATERIALIZED (SELECT COALESCE($1::bigint, ferry_now()) AS now)
INSERT INTO jobs (id, workspace, user_id, kind, queue, state, priority, input, labels, max_attempts,
                  backoff, timeout_ms, total_timeout_ms, idempotency_key, request_hash, created_at,
                  run_at, deadline_at, updated_at, soft_timeout_ms, cache_key, run_id, node_id, item, breaker,
                  ordering_key)
SELECT u.id, u.workspace, u.user_id, u.kind, u.queue,
       CASE WHEN u.run_at > clock.now THEN 'scheduled' ELSE 'queued' END,
       u.priority, u.input::jsonb, u.labels::jsonb, u.max_attempts, u.backoff::jsonb, u.timeout_ms,
       u.total_timeout_ms, u.idempotency_key, u.request_hash, clock.now,
       GREATEST(COALESCE(u.run_at, clock.now), clock.now),
       GREATEST(COALESCE(u.run_at, clock.now), clock.now) + u.total_timeout_ms * 1000,
       clock.now, u.soft_timeout_ms, u.cache_key, u.run_id, u.node_id, u.item, u.breaker,
       u.ordering_key
FROM clock, UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
            $9::text[], $10::int[], $11::text[], $12::bigint[], $13::bigint[], $14::text[],
            $15::text[], $16::bigint[], $17::bigint[], $18::text[],
            $19::uuid[], $20::text[], $21::bigint[], $22::text[], $23::text[])
     AS u(id, workspace, user_id, kind, queue, priority, input, labels, max_attempts, backoff,
          timeout_ms, total_timeout_ms, idempotency_key, request_hash, run_at, soft_timeout_ms, cache_key,
          run_id, node_id, item, breaker, ordering_key)
ON CONFLICT (workspace, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, state, queue, run_at, created_at, priority
