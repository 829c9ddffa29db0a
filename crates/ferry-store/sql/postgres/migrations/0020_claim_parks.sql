-- Parked claims of worker processes (`ferry worker`), which a submission on any node may
-- take (ferry-store's `park` module, `postgres/parks.rs`): the worker `worker` waits for
-- `slots` more jobs of `queue`, leased for `lease_ms` microseconds, until `expires_at`.
-- A submission that takes from the park leases its new jobs to the worker in its own
-- transaction, adds their ids to `taken` and takes their number off `slots`; the worker
-- deletes the row when it stops waiting and reads what was taken.
-- UNLOGGED: a park lasts one idle wait of one process. A crash of the database empties
-- the table; the workers park again, and a job leased to a park that was lost with it
-- comes back after its lease like any job of a lost worker.
CREATE UNLOGGED TABLE claim_parks (
    id          uuid PRIMARY KEY,
    queue       text NOT NULL,
    worker      text NOT NULL,
    slots       integer NOT NULL,
    lease_ms    bigint NOT NULL,
    expires_at  bigint NOT NULL,
    taken       uuid[]
);
CREATE INDEX claim_parks_waiting ON claim_parks (queue, id) WHERE slots > 0;
