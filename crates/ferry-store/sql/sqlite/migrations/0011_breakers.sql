-- Circuit breakers (ferry-core's `breaker` module), one row per target key, shared by
-- every process of the store. `data` is the breaker's state as JSON (`Breaker`), `state`
-- its state name again for listing, `settings` an operator's settings for this key
-- (PUT /v1/breakers/{key}), NULL for the configured ones.
CREATE TABLE breakers (
    key        TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    data       TEXT NOT NULL,
    settings   TEXT,
    changed_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A job's own breaker key (JobSpec.breaker), or the key its breaker held it back under;
-- NULL: its kind's, if any. The index finds the jobs a breaker holds back, to let them go
-- when it closes; only those rows are in it.
ALTER TABLE jobs ADD COLUMN breaker TEXT;
CREATE INDEX jobs_breaker_waiting ON jobs (breaker) WHERE state = 'scheduled' AND breaker IS NOT NULL;
