-- Ends a batch of running attempts, each fenced by its attempt number: a row whose job is
-- no longer running under that number is left alone and absent from RETURNING.
UPDATE jobs j
SET state = u.state, output = u.output::jsonb, error = u.error::jsonb,
    finished_at = CASE WHEN u.finished THEN $1 END,
    run_at = COALESCE(u.run_at, j.run_at),
    attempt_base = j.attempt_base + u.base_inc,
    worker_id = NULL, lease_expires_at = NULL, updated_at = $1
FROM UNNEST($2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::bigint[], $9::int[])
     AS u(id, attempt, state, output, error, finished, run_at, base_inc)
WHERE j.id = u.id AND j.state = 'running' AND j.attempt = u.attempt
RETURNING j.id, u.attempt
