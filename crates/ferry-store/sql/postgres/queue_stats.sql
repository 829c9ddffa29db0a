-- Per-queue counts of unfinished and dead jobs. One branch per state, so that each is
-- answered from its partial index instead of a scan of every job ever run.
SELECT queue, 'queued', count(*) FROM jobs WHERE state = 'queued' GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*) FROM jobs WHERE state = 'running' GROUP BY queue
UNION ALL
SELECT queue, state, count(*) FROM jobs WHERE state IN ('scheduled', 'retrying') GROUP BY queue, state
UNION ALL
SELECT queue, 'dead', count(*) FROM jobs WHERE state = 'dead' GROUP BY queue
