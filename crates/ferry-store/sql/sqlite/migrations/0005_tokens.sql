-- API tokens. Only the SHA-256 of a token is stored; the secret is shown once.
CREATE TABLE tokens (
    id          BLOB PRIMARY KEY,
    workspace   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX tokens_workspace ON tokens (workspace, created_at);
