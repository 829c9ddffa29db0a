-- Jobs and their events, as in the SQLite schema. Divergences, each for a reason:
-- * ids are `uuid` (16 bytes, ordered like the UUIDv7's time);
-- * JSON is `jsonb`, so operators can query inputs and outputs in place;
-- * times stay BIGINT microseconds since the epoch, like SQLite, so both backends share
--   one representation; they come from `ferry_now()`, the database's clock, so nodes
--   whose clocks drift still agree on leases and due times. It is the wall clock at the
--   call (`clock_timestamp()`), not the transaction's start (`now()`): a claim stamps its
--   start after its snapshot is taken, so it is never earlier than the creation of a job
--   it can see.

CREATE FUNCTION ferry_now() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint $$;

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    workspace        text NOT NULL,
    user_id          text NOT NULL,
    kind             text NOT NULL,
    queue            text NOT NULL,
    state            text NOT NULL,
    priority         integer NOT NULL,
    input            jsonb NOT NULL,
    labels           jsonb,
    max_attempts     integer NOT NULL,
    backoff          jsonb NOT NULL,
    timeout_ms       bigint NOT NULL,
    total_timeout_ms bigint,
    idempotency_key  text,
    request_hash     text,
    created_at       bigint NOT NULL,
    run_at           bigint NOT NULL,
    deadline_at      bigint,
    attempt          integer NOT NULL DEFAULT 0,
    attempt_base     integer NOT NULL DEFAULT 0,
    worker_id        text,
    lease_expires_at bigint,
    finished_at      bigint,
    updated_at       bigint NOT NULL,
    output           jsonb,
    error            jsonb
);

CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (queue, run_at) WHERE state IN ('scheduled', 'retrying');
CREATE INDEX jobs_lease ON jobs (lease_expires_at, queue) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_idempotency ON jobs (workspace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_dead ON jobs (queue, id) WHERE state = 'dead';

CREATE TABLE events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  uuid NOT NULL,
    at      bigint NOT NULL,
    type    text NOT NULL,
    data    jsonb NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE workers (
    id             text PRIMARY KEY,
    node           text NOT NULL,
    queues         jsonb NOT NULL,
    started_at     bigint NOT NULL,
    last_heartbeat bigint NOT NULL,
    running        integer NOT NULL DEFAULT 0
);
