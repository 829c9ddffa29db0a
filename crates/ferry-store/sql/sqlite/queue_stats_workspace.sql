-- Per-queue counts of workspace ?1's unfinished and dead jobs: queue_stats.sql for one
-- workspace, which is all a workspace may see of the queues it shares with others. Each
-- branch stays on its state's partial index; the workspace is a filter on its rows.
SELECT queue, 'queued', count(*) FROM jobs WHERE state = 'queued' AND workspace = ?1 GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*) FROM jobs WHERE state = 'running' AND workspace = ?1 GROUP BY queue
UNION ALL
SELECT queue, state, count(*) FROM jobs WHERE state IN ('scheduled', 'retrying') AND workspace = ?1 GROUP BY queue, state
UNION ALL
SELECT queue, 'dead', count(*) FROM jobs WHERE state = 'dead' AND workspace = ?1 GROUP BY queue
