-- Schedules (ferry-core's `schedule` module): per workspace, a cron or interval that
-- starts a job or a run at each tick. `spec` is the ScheduleSpec as created (JSON);
-- `next_fire_at` the next tick (NULL: it never ticks again), the column every firing
-- compares and sets, so that of many nodes exactly one fires a tick; `last_tick` the last
-- tick fired; `last_start` the id of the last job or run started (`last_start_kind`:
-- `job` or `run`), which the overlap policy asks about; `waiting_tick` a tick that waits
-- for it to end (`overlap: queue`). The counters and `last_error` are what listings show.
-- (0018 is another change's number.)
CREATE TABLE schedules (
    id              BLOB PRIMARY KEY,
    workspace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    spec            TEXT NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0,
    next_fire_at    INTEGER,
    last_tick       INTEGER,
    last_start_kind TEXT,
    last_start      BLOB,
    waiting_tick    INTEGER,
    started         INTEGER NOT NULL DEFAULT 0,
    skipped         INTEGER NOT NULL DEFAULT 0,
    refused         INTEGER NOT NULL DEFAULT 0,
    missed          INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX schedules_name ON schedules (workspace, name);
-- What the schedulers look for: the unpaused schedules by their next tick.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;
