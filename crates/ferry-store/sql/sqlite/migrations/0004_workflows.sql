-- Workflows (named, versioned DAGs), their runs, the runs' nodes and the runs' own event
-- logs. A node instance is a job with `run_id`, `node_id` and, for a `for_each` element,
-- `item`. A run's events are written only by the run's planner transaction (which holds
-- the run), so their ids follow commit order within a run; a node job's own events are
-- copied in (`source_event`) by the planner transaction that sees them.

CREATE TABLE workflows (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (workspace, name, version)
);

CREATE TABLE runs (
    id               BLOB PRIMARY KEY,
    workspace        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    state            TEXT NOT NULL,
    input            TEXT NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    deadline_at      INTEGER NOT NULL,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    error            TEXT
);
CREATE UNIQUE INDEX runs_idempotency ON runs (workspace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_running ON runs (deadline_at) WHERE state = 'running';

CREATE TABLE run_nodes (
    run_id   BLOB NOT NULL,
    node_id  TEXT NOT NULL,
    state    TEXT NOT NULL,
    items    INTEGER,
    output   TEXT,
    error    TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE run_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       BLOB NOT NULL,
    at           INTEGER NOT NULL,
    type         TEXT NOT NULL,
    node_id      TEXT,
    item         INTEGER,
    job_id       BLOB,
    source_event INTEGER,
    data         TEXT NOT NULL
);
CREATE INDEX run_events_run ON run_events (run_id, id);
CREATE UNIQUE INDEX run_events_source ON run_events (source_event) WHERE source_event IS NOT NULL;

ALTER TABLE jobs ADD COLUMN run_id BLOB;
ALTER TABLE jobs ADD COLUMN node_id TEXT;
ALTER TABLE jobs ADD COLUMN item INTEGER;
-- 1 once a finished node job's events are all in its run's log: later advances skip it.
ALTER TABLE jobs ADD COLUMN run_synced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_run_unsynced ON jobs (run_id) WHERE run_id IS NOT NULL AND run_synced = 0;
CREATE UNIQUE INDEX jobs_run_node ON jobs (run_id, node_id, COALESCE(item, -1)) WHERE run_id IS NOT NULL;
