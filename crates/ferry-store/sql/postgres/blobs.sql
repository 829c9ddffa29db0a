-- Blobs on PostgreSQL (src/postgres/blobs.rs): one table every node reaches. SQLite keeps
-- blobs as files in the data directory instead (src/sqlite/blobs.rs), so it has no such
-- statements: a file's name is its key, its modification time its last use.

-- name: BOUND
-- The operation's bound, for the rest of its transaction: a statement still waiting (a
-- lock, a slow disk) is ended by the database at the bound, so nothing runs on after the
-- caller gave up.
SELECT set_config('statement_timeout', $1, true)

-- name: TOUCH_BLOB
-- Marks a blob used (a put of bytes already stored); whether it exists.
UPDATE blobs SET used_at = ferry_now() WHERE workspace = $1 AND hash = $2

-- name: INSERT_BLOB
-- A new blob. A concurrent put of the same bytes may have stored it since the touch
-- found nothing: then this stores nothing, as the content is the same.
INSERT INTO blobs (workspace, hash, media, size, data, created_at, used_at)
VALUES ($1, $2, $3, $4, $5, ferry_now(), ferry_now())
ON CONFLICT (workspace, hash) DO NOTHING

-- name: READ_BLOB
SELECT media, data, used_at < ferry_now() - $3 AS stale FROM blobs WHERE workspace = $1 AND hash = $2

-- name: DELETE_BLOB
DELETE FROM blobs WHERE workspace = $1 AND hash = $2

-- name: PRUNE_BLOBS
-- Blobs unused for longer than $1 microseconds, at most $2 of them; rows another prune
-- holds are skipped (it deletes them).
DELETE FROM blobs WHERE (workspace, hash) IN (
    SELECT workspace, hash FROM blobs WHERE used_at < ferry_now() - $1
    ORDER BY used_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
