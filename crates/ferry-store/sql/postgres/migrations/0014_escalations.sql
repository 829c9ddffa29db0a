-- Escalations (ferry-core's `escalation` module): when each rule last fired for each
-- group, so that a group fires at most once per window whatever the number of nodes
-- evaluating it. `grp` is the group's key (a digest of its fields), `job_id` the webhook
-- job of the last firing, `fires` how many times it fired. Rows older than the longest
-- window (a day) are forgotten when a rule fires.
CREATE TABLE escalations (
    rule     TEXT NOT NULL,
    grp      TEXT NOT NULL,
    fired_at BIGINT NOT NULL,
    job_id   UUID NOT NULL,
    fires    BIGINT NOT NULL,
    PRIMARY KEY (rule, grp)
);

-- The jobs gone dead in a time window (escalation rules `dead on queue X`), newest first,
-- without scanning the whole event log: only `dead` events are in the index.
CREATE INDEX events_dead ON events (at) WHERE type = 'dead';
