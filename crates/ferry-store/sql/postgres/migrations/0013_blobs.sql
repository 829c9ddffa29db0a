-- Blobs (ferry-store's `blobs` module): content-addressed bytes per workspace, the
-- claim-checked inputs and outputs of jobs among them. `hash` is the SHA-256 of `data`
-- in lowercase hex; `media` is `json`, `text` or `bytes`; times are ferry_now()'s
-- microseconds, `used_at` the last put or read (pruning deletes blobs unused past the
-- retention; the index finds them oldest first). `data` is stored out of line (TOAST)
-- and is at most `[blobs] max_bytes` (bytea itself stops at 1 GiB).
CREATE TABLE blobs (
    workspace  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    media      TEXT NOT NULL,
    size       BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace, hash)
);
CREATE INDEX blobs_used ON blobs (used_at);
