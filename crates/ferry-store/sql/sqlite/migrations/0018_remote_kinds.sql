-- The kinds remote workers registered (ferry-worker's `remote.rs`): every node accepts
-- jobs of these kinds, and sends a job that names no queue to its kind's.
CREATE TABLE remote_kinds (
    kind        TEXT PRIMARY KEY,
    queue       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
