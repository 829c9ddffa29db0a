-- The rated claim on PostgreSQL (postgres/claim.rs): the rates in force and the token
-- buckets (see rate.rs). The plain claim is claim.sql, the leasing of the chosen jobs
-- claim_ids.sql.

-- name: RATED_QUEUES
-- Queues with a rate. The same statement on SQLite.
SELECT name, rate FROM queue_settings WHERE rate > 0

-- name: RATED_SHARES
-- Workspaces' shares of queues with a rate. The same statement on SQLite.
SELECT queue, workspace, rate FROM queue_shares WHERE rate > 0

-- name: RATED_LABELS
-- Workspaces' labels with a rate. The same statement on SQLite.
SELECT workspace, label, rate FROM label_rates WHERE rate > 0

-- name: RATED_CANDIDATES
-- Up to $2 ready jobs of queue $1 in claim order, locked with SKIP LOCKED: claimers never wait (SQLite has one writer).
SELECT id, workspace, labels::text FROM jobs WHERE queue = $1 AND state = 'queued'
AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = $1 AND paused)
AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = $1 AND paused)
ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED

-- name: CREATE_BUCKETS
-- Creates the missing buckets of arrays $1 (keys) and $2 (full), in key order, for BUCKETS to lock (SQLite: SAVE_BUCKETS).
INSERT INTO rate_buckets (bucket, tokens, refilled_at)
SELECT k, t, $3 FROM unnest($1::text[], $2::float8[]) AS u(k, t) ORDER BY k
ON CONFLICT (bucket) DO NOTHING

-- name: BUCKETS
-- The buckets of the array $1, locked in key order (no deadlock between claimers); SQLite reads one at a time, unlocked.
SELECT bucket, tokens, refilled_at FROM rate_buckets WHERE bucket = ANY($1) ORDER BY bucket FOR UPDATE

-- name: SAVE_BUCKETS
-- Writes the buckets of the arrays $1 to $3 back in one statement; SQLite upserts one at a time (creating the missing).
UPDATE rate_buckets SET tokens = u.t, refilled_at = u.at
FROM unnest($1::text[], $2::float8[], $3::int8[]) AS u(k, t, at) WHERE rate_buckets.bucket = u.k
