-- Statements of remote kinds and of the events remote workers write (ferry-store's
-- `remote.rs`). As on SQLite, `$N` for `?N`.

-- name: PUT_REMOTE_KIND
-- Registers a remote kind, or moves it to another queue.
INSERT INTO remote_kinds (kind, queue, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (kind) DO UPDATE SET queue = excluded.queue, updated_at = excluded.updated_at

-- name: REMOTE_KINDS
SELECT kind, queue FROM remote_kinds ORDER BY kind

-- name: JOB_EVENTS
-- The events of a running attempt, fenced by its attempt number (a stale worker writes
-- nothing), in order: `$3` and `$4` are arrays of equal length. The job's row is locked
-- first, so a finish cannot commit between the check and the insert; the data come as
-- JSON text. SQLite inserts one event per statement under its one writer.
WITH fence AS (
    SELECT id FROM jobs WHERE id = $1 AND state = 'running' AND attempt = $2 FOR UPDATE
)
INSERT INTO events (job_id, at, type, data)
SELECT fence.id, ferry_now(), e.type, e.data::jsonb
FROM fence, unnest($3::text[], $4::text[]) WITH ORDINALITY AS e(type, data, n)
ORDER BY e.n
