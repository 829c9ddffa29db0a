-- Jobs and their events. A job's attempts are read from its events (`started`, then
-- `succeeded`, `attempt_failed`, `released` or `cancelled` with the same attempt number).
-- Times are INTEGER microseconds since the Unix epoch; JSON is TEXT; ids are UUIDv7 as
-- 16-byte BLOBs, whose byte order is their time order.

CREATE TABLE jobs (
    id               BLOB PRIMARY KEY,      -- UUIDv7: time-ordered, so inserts append
    workspace        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    input            TEXT NOT NULL,
    labels           TEXT,
    max_attempts     INTEGER NOT NULL,
    backoff          TEXT NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    total_timeout_ms INTEGER,
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,      -- when the job is (or was) due
    deadline_at      INTEGER,               -- end of the retry budget
    attempt          INTEGER NOT NULL DEFAULT 0,  -- attempts ever started: the fencing token
    attempt_base     INTEGER NOT NULL DEFAULT 0,  -- attempts that no longer count (replay, release)
    worker_id        TEXT,
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    output           TEXT,
    error            TEXT
);

-- The claim query's index: only ready jobs, in claim order. Partial, so it stays as small
-- as the backlog however many finished rows the table holds.
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
-- Scheduled and retrying jobs by due time, for promotion and the dispatcher's next wake-up.
CREATE INDEX jobs_due ON jobs (queue, run_at) WHERE state IN ('scheduled', 'retrying');
-- Running jobs by lease expiry, for the reaper.
CREATE INDEX jobs_lease ON jobs (lease_expires_at, queue) WHERE state = 'running';
-- Exactly-once submission.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (workspace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The dead-letter queue. There is deliberately no general index on `state`: every job
-- changes state three times, and each index on it would be rewritten each time. The
-- partial indexes above and this one cover every per-state count and the DLQ listing.
CREATE INDEX jobs_dead ON jobs (queue, id) WHERE state = 'dead';

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so ids only grow
    job_id  BLOB NOT NULL,
    at      INTEGER NOT NULL,
    type    TEXT NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);
