-- Statements of the parks other processes can take (src/postgres/parks.rs). SQLite has
-- none: its data directory belongs to one process, whose parks are all in memory.

-- name: PARK
-- A worker process parks its claim ($1 the park, $2 the queue, $3 the worker, $4 slots,
-- $5 the lease in microseconds, $6 how long it may be taken) and tells every node that
-- the queue has a park ($7 the parks channel). Rows long expired (a worker that died
-- parked) go on the way.
WITH expired AS (
    DELETE FROM claim_parks WHERE expires_at < ferry_now() - 60000000
), parked AS (
    INSERT INTO claim_parks (id, queue, worker, slots, lease_ms, expires_at)
    VALUES ($1, $2, $3, $4, $5, ferry_now() + $6)
    RETURNING queue
)
SELECT pg_notify($7, queue) FROM parked

-- name: WAITING
-- A submission's view of the parks with slots on its queues $1, locked until its commit
-- (SKIP LOCKED: another submission takes the others).
SELECT id, queue, worker, slots, lease_ms FROM claim_parks
WHERE queue = ANY($1) AND slots > 0 AND expires_at > ferry_now()
ORDER BY queue, id
FOR UPDATE SKIP LOCKED

-- name: TAKEN
-- A park of another process taken from: the jobs leased to it ($2) are added to what it
-- was leased, and off its free slots (another submission may take the rest before the
-- worker withdraws).
UPDATE claim_parks SET taken = COALESCE(taken, '{}') || $2, slots = slots - cardinality($2) WHERE id = $1

-- name: UNPARK
-- The worker stops waiting: what was taken, if anything. Waits for the commit of a
-- submission that holds the row.
DELETE FROM claim_parks WHERE id = $1 RETURNING taken

-- name: LEASED
-- The jobs $1 submissions leased to the worker $2, in claim order, as `claim.sql`
-- answers them (their start is the claim's `updated_at`); a job cancelled since is not
-- among them.
SELECT jobs.id, jobs.kind, jobs.queue, jobs.input::text AS input, jobs.attempt, jobs.attempt_base,
       jobs.max_attempts, jobs.backoff::text AS backoff, jobs.timeout_ms, jobs.deadline_at,
       jobs.run_at, jobs.soft_timeout_ms, jobs.workspace, jobs.cache_key, jobs.run_id, jobs.priority, jobs.breaker,
       jobs.ordering_key, jobs.user_id, jobs.updated_at
FROM jobs WHERE id = ANY($1) AND state = 'running' AND worker_id = $2
ORDER BY priority DESC, run_at, id
