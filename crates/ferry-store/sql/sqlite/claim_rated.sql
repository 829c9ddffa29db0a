-- The rated claim on SQLite (sqlite/claim.rs): the token buckets (see rate.rs), inside
-- the writer's transaction. The plain claim is claim.sql, the leasing of a chosen job
-- claim_one.sql, the rates read rows.sql.

-- name: RATED_CANDIDATES
-- Up to ?2 ready jobs of queue ?1, in claim order; PostgreSQL locks them with SKIP LOCKED, which the one writer needs not.
SELECT id, workspace, labels FROM jobs WHERE queue = ?1 AND state = 'queued'
AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = ?1 AND paused)
AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = ?1 AND paused)
ORDER BY priority DESC, run_at, id LIMIT ?2

-- name: BUCKETS
-- One bucket, unlocked: the writer is alone; PostgreSQL reads all at once (`ANY($1)`), locked in key order.
SELECT tokens, refilled_at FROM rate_buckets WHERE bucket = ?1

-- name: SAVE_BUCKETS
-- Writes one bucket back, creating it if missing; PostgreSQL creates them first (CREATE_BUCKETS), then updates all at once.
INSERT INTO rate_buckets (bucket, tokens, refilled_at) VALUES (?1, ?2, ?3)
ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at
