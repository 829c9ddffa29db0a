-- jobs_inflight's condition as equalities joined by OR instead of an IN list: SQLite
-- evaluates a partial index's condition for every row an insert, update or delete
-- writes, and for an IN list of more than two values it builds a small temporary b-tree
-- each time (twice per update: the old row and the new). That was a measurable part of
-- every claim, finish and submission. The same set of states; JOBS_IN_FLIGHT (admission.sql)
-- names the condition in the same words, so it keeps using the index. SQLite only: a
-- PostgreSQL index condition costs no such thing, and its number 20 stays free.
DROP INDEX jobs_inflight;
CREATE INDEX jobs_inflight ON jobs (workspace, user_id)
    WHERE run_id IS NULL AND (state = 'queued' OR state = 'scheduled' OR state = 'running' OR state = 'retrying');
