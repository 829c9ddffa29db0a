-- Statements of remote kinds and of the events remote workers write (ferry-store's
-- `remote.rs`). As on PostgreSQL, `?N` for `$N`.

-- name: PUT_REMOTE_KIND
-- Registers a remote kind, or moves it to another queue.
INSERT INTO remote_kinds (kind, queue, updated_at) VALUES (?1, ?2, ?3)
ON CONFLICT (kind) DO UPDATE SET queue = excluded.queue, updated_at = excluded.updated_at

-- name: REMOTE_KINDS
SELECT kind, queue FROM remote_kinds ORDER BY kind

-- name: JOB_EVENT
-- One event of a running attempt, fenced by its attempt number: a stale worker writes
-- nothing.
INSERT INTO events (job_id, at, type, data)
SELECT id, ?3, ?4, ?5 FROM jobs WHERE id = ?1 AND state = 'running' AND attempt = ?2
