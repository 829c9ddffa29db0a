-- Workflows (named, versioned DAGs), their runs, the runs' nodes and the runs' own event
-- logs. A node instance is a job with `run_id`, `node_id` and, for a `for_each` element,
-- `item`. A run's events are written only by the run's planner transaction (which holds
-- the run), so their ids follow commit order within a run; a node job's own events are
-- copied in (`source_event`) by the planner transaction that sees them.

CREATE TABLE workflows (
    workspace   text NOT NULL,
    name        text NOT NULL,
    version     bigint NOT NULL,
    definition  jsonb NOT NULL,
    created_at  bigint NOT NULL,
    created_by  text NOT NULL,
    PRIMARY KEY (workspace, name, version)
);

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    workspace        text NOT NULL,
    user_id          text NOT NULL,
    workflow         text NOT NULL,
    version          bigint NOT NULL,
    state            text NOT NULL,
    input            jsonb NOT NULL,
    idempotency_key  text,
    request_hash     text,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       bigint NOT NULL,
    deadline_at      bigint NOT NULL,
    finished_at      bigint,
    updated_at       bigint NOT NULL,
    error            text
);
CREATE UNIQUE INDEX runs_idempotency ON runs (workspace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_running ON runs (deadline_at) WHERE state = 'running';

CREATE TABLE run_nodes (
    run_id   uuid NOT NULL,
    node_id  text NOT NULL,
    state    text NOT NULL,
    items    bigint,
    output   text,
    error    text,
    updated_at bigint NOT NULL,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE run_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       uuid NOT NULL,
    at           bigint NOT NULL,
    type         text NOT NULL,
    node_id      text,
    item         bigint,
    job_id       uuid,
    source_event bigint,
    data         text NOT NULL
);
CREATE INDEX run_events_run ON run_events (run_id, id);
CREATE UNIQUE INDEX run_events_source ON run_events (source_event) WHERE source_event IS NOT NULL;

ALTER TABLE jobs ADD COLUMN run_id uuid;
ALTER TABLE jobs ADD COLUMN node_id text;
ALTER TABLE jobs ADD COLUMN item bigint;
-- 1 once a finished node job's events are all in its run's log: later advances skip it.
ALTER TABLE jobs ADD COLUMN run_synced boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_run_unsynced ON jobs (run_id) WHERE run_id IS NOT NULL AND NOT run_synced;
CREATE UNIQUE INDEX jobs_run_node ON jobs (run_id, node_id, COALESCE(item, -1)) WHERE run_id IS NOT NULL;
