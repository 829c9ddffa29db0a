-- API tokens. Only the SHA-256 of a token is stored; the secret is shown once.
CREATE TABLE tokens (
    id          uuid PRIMARY KEY,
    workspace   text NOT NULL,
    user_id     text NOT NULL,
    role        text NOT NULL,
    hash        text NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);
CREATE INDEX tokens_workspace ON tokens (workspace, created_at);
