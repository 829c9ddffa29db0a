-- A workspace's share of a queue (PUT /v1/queues/{name} by the workspace's admin). While
-- `paused`, every claim of the queue skips the workspace's jobs (claim.sql reads this table
-- in the claiming statement itself, so a pause holds on every node from its commit), and
-- other workspaces' jobs go on. A row exists only for a share that was ever set.
CREATE TABLE queue_shares (
    queue       text NOT NULL,
    workspace   text NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (queue, workspace)
);

-- Whether this store has had an API token (one row). Set in the transaction that stores
-- a token, cleared only by `ferry token reopen` while no unrevoked token exists: a store
-- whose tokens were all revoked stays closed instead of going back to open mode.
CREATE TABLE auth_state (
    id      integer PRIMARY KEY CHECK (id = 1),
    closed  boolean NOT NULL
);
INSERT INTO auth_state (id, closed) SELECT 1, EXISTS (SELECT 1 FROM tokens);
