-- Workflows and runs on SQLite (sqlite/runs.rs): the writer thread's run transitions,
-- each inside the group-commit transaction (which is what holds the run), and the reads.
-- `{RUN_COLUMNS}` and the like mark where Rust puts in the column list of that name (the
-- order runs.rs reads); `{filters}` LIST_RUNS' optional conditions.

-- name: RUN_COLUMNS
-- A run's columns, in the order runs::run_row reads them; PostgreSQL casts input (jsonb) to text, cancel_requested to int.
id, workspace, user_id, workflow, version, state, input, idempotency_key,
cancel_requested, created_at, deadline_at, finished_at, updated_at, error, depth

-- name: NODE_COLUMNS
-- A run node's columns, in the order runs::node_row reads them. The same list on PostgreSQL.
node_id, state, items, output, error, updated_at, agent

-- name: RUN_JOB_COLUMNS
-- A run job's columns, in the order runs::job_row reads them; output and error are text here (PostgreSQL casts its jsonb).
id, node_id, item, state, attempt - attempt_base, output, error

-- name: EVENT_COLUMNS
-- A run log entry's columns, in the order runs::event_row reads them. The same list on PostgreSQL.
id, at, type, node_id, item, job_id, data

-- name: MIRROR
-- Copies the events of run ?1's jobs its log lacks, in job-log order; `run_synced = 0` for PostgreSQL's `NOT run_synced`.
INSERT INTO run_events (run_id, at, type, node_id, item, job_id, source_event, data)
SELECT j.run_id, e.at, e.type, j.node_id, j.item, e.job_id, e.id, e.data
FROM jobs j JOIN events e ON e.job_id = j.id
WHERE j.run_id = ?1 AND j.run_synced = 0
  AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id)
ORDER BY e.id

-- name: SYNCED
-- Marks run ?1's finished jobs whose events are all copied, checked event by event as on PostgreSQL (1 and 0 for booleans).
UPDATE jobs SET run_synced = 1
WHERE run_id = ?1 AND run_synced = 0 AND state IN ('succeeded', 'dead', 'cancelled')
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = jobs.id
                  AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id))

-- name: NEXT_WORKFLOW_VERSION
-- The number of a workflow name's next version; the writer is alone, where PostgreSQL locks the name first.
SELECT COALESCE(MAX(version), 0) + 1 FROM workflows WHERE workspace = ?1 AND name = ?2

-- name: INSERT_WORKFLOW
-- Stores a workflow version, its definition as text (PostgreSQL casts it to jsonb).
INSERT INTO workflows (workspace, name, version, definition, created_at, created_by)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)

-- name: WORKFLOW_DEFINITION
-- One version's definition, text already (PostgreSQL reads its jsonb as text). `?n` for `$n`.
SELECT definition FROM workflows WHERE workspace = ?1 AND name = ?2 AND version = ?3

-- name: RUN_BY_KEY
-- The run of a workspace's idempotency key; the writer is alone, where PostgreSQL locks the key first (LOCK_RUN_KEY).
SELECT id, version, state, request_hash FROM runs WHERE workspace = ?1 AND idempotency_key = ?2

-- name: LATEST_VERSION
-- A workflow's latest version (NULL when none). As on PostgreSQL, `?n` for `$n`.
SELECT MAX(version) FROM workflows WHERE workspace = ?1 AND name = ?2

-- name: QUEUED_RUN_COUNT
-- How many runs of a workspace wait. As on PostgreSQL, `?1` for `$1`.
SELECT COUNT(*) FROM runs WHERE workspace = ?1 AND state = 'queued'

-- name: INSERT_RUN
-- Stores a new run, its input as text (PostgreSQL casts it to jsonb).
INSERT INTO runs (id, workspace, user_id, workflow, version, state, input, idempotency_key,
request_hash, created_at, deadline_at, updated_at, depth)
VALUES (?1, ?2, ?3, ?4, ?5, ?11, ?6, ?7, ?8, ?9, ?10, ?9, ?12)

-- name: LOCK_RUN
-- A run; the writer's transaction holds the whole database, where PostgreSQL locks the row (FOR UPDATE).
SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1

-- name: INSERT_RUN_EVENT
-- Appends to a run's log. As on PostgreSQL, `?n` for `$n`.
INSERT INTO run_events (run_id, at, type, node_id, data) VALUES (?1, ?2, ?3, ?4, ?5)

-- name: PUT_NODE
-- Stores a run node's record. As on PostgreSQL, `?n` for `$n`.
INSERT INTO run_nodes (run_id, node_id, state, items, output, error, updated_at, agent)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT (run_id, node_id) DO UPDATE SET state = excluded.state, items = excluded.items,
output = excluded.output, error = excluded.error, updated_at = excluded.updated_at, agent = excluded.agent

-- name: FINISH_RUN
-- Ends a run. As on PostgreSQL, `?n` for `$n`.
UPDATE runs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?1

-- name: TOUCH_RUN
-- Notes that a run advanced. As on PostgreSQL, `?n` for `$n`.
UPDATE runs SET updated_at = ?2 WHERE id = ?1

-- name: REQUEST_RUN_CANCEL
-- Marks a run's cancellation as asked for; 1 where PostgreSQL writes `true` (SQLite has no booleans).
UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1

-- name: START_RUN
-- Starts a waiting run. As on PostgreSQL, `?n` for `$n`.
UPDATE runs SET state = 'running', deadline_at = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'queued'

-- name: QUEUED_RUNS
-- Up to 1000 waiting runs of a workspace, oldest first. As on PostgreSQL, `?1` for `$1`.
SELECT id, user_id, workflow, version FROM runs WHERE workspace = ?1 AND state = 'queued'
ORDER BY id LIMIT 1000

-- name: QUEUED_RUN_WORKSPACES
-- Up to 100 workspaces with waiting runs. The same statement on PostgreSQL.
SELECT DISTINCT workspace FROM runs WHERE state = 'queued' LIMIT 100

-- name: RUN_NODES
-- A run's nodes, by id. As on PostgreSQL, `?1` for `$1`.
SELECT {NODE_COLUMNS} FROM run_nodes WHERE run_id = ?1 ORDER BY node_id

-- name: RUN_JOBS
-- A run's jobs, by node, item and id. As on PostgreSQL, `?1` for `$1`.
SELECT {RUN_JOB_COLUMNS} FROM jobs WHERE run_id = ?1 ORDER BY node_id, item, id

-- name: WORKFLOWS
-- A workspace's workflows: each name's latest version and when it was stored. As on PostgreSQL, `?1` for `$1`.
SELECT name, MAX(version), MAX(created_at) FROM workflows WHERE workspace = ?1 GROUP BY name ORDER BY name

-- name: WORKFLOW_VERSIONS
-- Every version of a workflow, oldest first; the definition is text already (PostgreSQL casts its jsonb).
SELECT name, version, definition, created_at, created_by FROM workflows
WHERE workspace = ?1 AND name = ?2 ORDER BY version

-- name: WORKFLOW_VERSION
-- Version ?3 of a workflow, or its latest when ?3 is NULL; PostgreSQL must type that parameter (`$3::int8`).
SELECT name, version, definition, created_at, created_by FROM workflows
WHERE workspace = ?1 AND name = ?2 AND (?3 IS NULL OR version = ?3) ORDER BY version DESC LIMIT 1

-- name: GET_RUN
-- A run of a workspace. As on PostgreSQL, `?n` for `$n`.
SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND workspace = ?2

-- name: LIST_RUNS
-- A page of a workspace's runs, newest first, with the filters given (each `AND column = ?`, its parameter in turn).
SELECT {RUN_COLUMNS} FROM runs WHERE workspace = ?{filters} ORDER BY id DESC LIMIT ?

-- name: RUN_EXISTS
-- Whether a run of a workspace exists. As on PostgreSQL, `?n` for `$n`.
SELECT 1 FROM runs WHERE id = ?1 AND workspace = ?2

-- name: RUN_EVENTS
-- Up to ?3 entries of a run's log after id ?2, in order. As on PostgreSQL, `?n` for `$n`.
SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3

-- name: RUNS_TO_SWEEP
-- Up to ?3 running runs past their deadline (?1, now) or idle since ?2, from the process's clock (PostgreSQL: ferry_now()).
SELECT id FROM runs WHERE state = 'running' AND (deadline_at <= ?1 OR updated_at <= ?2)
ORDER BY deadline_at LIMIT ?3

-- name: TOKENS_USED
-- The tokens a workspace's agents used on a UTC day. As on PostgreSQL, `?n` for `$n`.
SELECT COALESCE((SELECT tokens FROM token_usage WHERE workspace = ?1 AND day = ?2), 0)

-- name: ADD_TOKENS
-- Adds to a workspace's tokens of a UTC day. As on PostgreSQL, `?n` for `$n`.
INSERT INTO token_usage (workspace, day, tokens) VALUES (?1, ?2, ?3)
ON CONFLICT (workspace, day) DO UPDATE SET tokens = token_usage.tokens + excluded.tokens
