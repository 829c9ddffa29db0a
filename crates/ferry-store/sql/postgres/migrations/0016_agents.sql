-- Agent nodes (ferry_core::agent): a node's conversation and what it waits for, as JSON
-- text like the node's output, written with the jobs it names; and the tokens each
-- workspace's agents used per UTC day (`day`: days since 1970-01-01), what
-- `tokens_per_day` is checked against.
ALTER TABLE run_nodes ADD COLUMN agent text;
CREATE TABLE token_usage (
    workspace text NOT NULL,
    day       bigint NOT NULL,
    tokens    bigint NOT NULL,
    PRIMARY KEY (workspace, day)
);
