-- Appends a batch of events in one statement.
INSERT INTO events (job_id, at, type, data)
SELECT u.job_id, $1, u.type, u.data::jsonb
FROM UNNEST($2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS u(job_id, type, data, n)
ORDER BY u.n
