-- The kinds remote workers registered (ferry-worker's `remote.rs`): every node accepts
-- jobs of these kinds, and sends a job that names no queue to its kind's.
CREATE TABLE remote_kinds (
    kind        text PRIMARY KEY,
    queue       text NOT NULL,
    updated_at  bigint NOT NULL
);
