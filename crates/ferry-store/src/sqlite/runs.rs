//! Workflows and runs on SQLite: the writer thread's run transitions (each inside the
//! group-commit transaction, which is what holds the run) and the reads.

use super::tx::SqliteTx;
use super::{Writer, parse_enum};
use crate::rules::runs::{KeyedRun, QueuedRun, RunChange, RunTx};
use crate::runs::{
    self, NewRun, RunDetail, RunEvent, RunFilter, RunJobRow, RunNodeRow, RunPage, RunRow, WorkflowSummary,
    WorkflowVersion,
};
use crate::{StoreError, Subject};
use async_trait::async_trait;
use ferry_core::run::{NodeRecord, NodeState, RunId, RunJobNew, RunState};
use ferry_core::time::Micros;
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use serde_json::Value;

pub(super) const RUN_COLUMNS: &str = "id, workspace, user_id, workflow, version, state, input, idempotency_key, \
     cancel_requested, created_at, deadline_at, finished_at, updated_at, error";
const NODE_COLUMNS: &str = "node_id, state, items, output, error, updated_at";
const RUN_JOB_COLUMNS: &str = "id, node_id, item, state, attempt - attempt_base, output, error";
const EVENT_COLUMNS: &str = "id, at, type, node_id, item, job_id, data";

/// Copies the events of the run's jobs that its log does not have yet, in job-log order:
/// every job the planner can see has its events in the log before the planner's own.
const MIRROR: &str = "INSERT INTO run_events (run_id, at, type, node_id, item, job_id, source_event, data) \
     SELECT j.run_id, e.at, e.type, j.node_id, j.item, e.job_id, e.id, e.data \
     FROM jobs j JOIN events e ON e.job_id = j.id \
     WHERE j.run_id = ?1 AND j.run_synced = 0 \
       AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id) \
     ORDER BY e.id";
/// Finished jobs whose events are all copied now: later advances skip them. Checked
/// event by event, as on PostgreSQL (there a job may finish after the copy's snapshot).
const SYNCED: &str = "UPDATE jobs SET run_synced = 1 \
     WHERE run_id = ?1 AND run_synced = 0 AND state IN ('succeeded', 'dead', 'cancelled') \
       AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = jobs.id \
                       AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id))";

impl Writer {
    pub(super) fn put_workflow(
        &mut self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: &Value,
    ) -> Result<u32, StoreError> {
        let version: u32 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(version), 0) + 1 FROM workflows WHERE workspace = ?1 AND name = ?2")?
            .query_row(params![workspace, name], |r| r.get(0))?;
        self.conn
            .prepare_cached(
                "INSERT INTO workflows (workspace, name, version, definition, created_at, created_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![workspace, name, version, definition.to_string(), self.now, user])?;
        Ok(version)
    }

    fn definition(&self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT definition FROM workflows WHERE workspace = ?1 AND name = ?2 AND version = ?3")?
            .query_row(params![workspace, name, version], |r| r.get(0))
            .optional()?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Database(e.to_string()))).transpose()
    }
}

#[async_trait]
impl RunTx for SqliteTx<'_> {
    async fn run_by_key(&mut self, workspace: &str, key: &str) -> Result<Option<KeyedRun>, StoreError> {
        let found: Option<(RunId, u32, String, Option<String>)> = self
            .w
            .conn
            .prepare_cached(
                "SELECT id, version, state, request_hash FROM runs WHERE workspace = ?1 AND idempotency_key = ?2",
            )?
            .query_row(params![workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        found
            .map(|(id, version, state, request_hash)| {
                Ok(KeyedRun { id, version, state: parse_enum(&state)?, request_hash })
            })
            .transpose()
    }

    async fn latest_version(&mut self, workspace: &str, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .w
            .conn
            .prepare_cached("SELECT MAX(version) FROM workflows WHERE workspace = ?1 AND name = ?2")?
            .query_row(params![workspace, name], |r| r.get(0))?)
    }

    async fn definition(&mut self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        self.w.definition(workspace, name, version)
    }

    async fn runs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        self.w.in_flight("runs", workspace, user)
    }

    async fn queued_count(&mut self, workspace: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .w
            .conn
            .prepare_cached("SELECT COUNT(*) FROM runs WHERE workspace = ?1 AND state = 'queued'")?
            .query_row(params![workspace], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    async fn insert_run(
        &mut self,
        run: &NewRun,
        version: u32,
        state: RunState,
        deadline: Micros,
    ) -> Result<(), StoreError> {
        self.w
            .conn
            .prepare_cached(
                "INSERT INTO runs (id, workspace, user_id, workflow, version, state, input, idempotency_key, \
                 request_hash, created_at, deadline_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?11, ?6, ?7, ?8, ?9, ?10, ?9)",
            )?
            .execute(params![
                run.id,
                run.workspace,
                run.user,
                run.workflow,
                version,
                run.input.to_string(),
                run.idempotency_key,
                run.request_hash,
                self.w.now,
                deadline,
                state.as_str(),
            ])?;
        Ok(())
    }

    async fn lock_run(&mut self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        Ok(self.w.conn.prepare_cached(&sql)?.query_row(params![id], |r| runs::run_row(r)).optional()?)
    }

    async fn run_event(&mut self, run: RunId, kind: &str, node: Option<&str>, data: &Value) -> Result<(), StoreError> {
        self.w
            .conn
            .prepare_cached("INSERT INTO run_events (run_id, at, type, node_id, data) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![run, self.w.now, kind, node, data.to_string()])?;
        self.w.touched(Subject::Run(run));
        Ok(())
    }

    async fn mirror(&mut self, run: RunId) -> Result<(), StoreError> {
        if self.w.conn.prepare_cached(MIRROR)?.execute(params![run])? > 0 {
            self.w.touched(Subject::Run(run));
        }
        self.w.conn.prepare_cached(SYNCED)?.execute(params![run])?;
        Ok(())
    }

    async fn nodes(&mut self, run: RunId) -> Result<Vec<RunNodeRow>, StoreError> {
        Ok(read_nodes(&self.w.conn, run)?)
    }

    async fn jobs(&mut self, run: RunId) -> Result<Vec<RunJobRow>, StoreError> {
        Ok(read_jobs(&self.w.conn, run)?)
    }

    async fn create_jobs(&mut self, run: RunId, jobs: &[RunJobNew]) -> Result<(), StoreError> {
        for new in jobs {
            self.w.insert_job(&new.job, Some((run, &new.node, new.item)), None)?;
        }
        Ok(())
    }

    async fn put_node(&mut self, run: RunId, node: &str, rec: &NodeRecord) -> Result<(), StoreError> {
        self.w
            .conn
            .prepare_cached(
                "INSERT INTO run_nodes (run_id, node_id, state, items, output, error, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (run_id, node_id) DO UPDATE SET state = excluded.state, items = excluded.items, \
                 output = excluded.output, error = excluded.error, updated_at = excluded.updated_at",
            )?
            .execute(params![
                run,
                node,
                rec.state.unwrap_or(NodeState::Pending).as_str(),
                rec.items,
                rec.output.as_ref().map(Value::to_string),
                rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()),
                self.w.now,
            ])?;
        Ok(())
    }

    async fn update_run(&mut self, run: RunId, change: RunChange<'_>) -> Result<bool, StoreError> {
        let now = self.w.now;
        let c = &self.w.conn;
        let n = match change {
            RunChange::Finish { state, error } => c
                .prepare_cached("UPDATE runs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?1")?
                .execute(params![run, state.as_str(), error.map(|e| serde_json::to_string(e).unwrap_or_default()), now])?,
            RunChange::Touch => c.prepare_cached("UPDATE runs SET updated_at = ?2 WHERE id = ?1")?.execute(params![run, now])?,
            RunChange::CancelRequested => c
                .prepare_cached("UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1")?
                .execute(params![run, now])?,
            RunChange::Start { deadline } => c
                .prepare_cached(
                    "UPDATE runs SET state = 'running', deadline_at = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'queued'",
                )?
                .execute(params![run, deadline, now])?,
        };
        Ok(n > 0)
    }

    async fn queued_runs(&mut self, workspace: &str) -> Result<Vec<QueuedRun>, StoreError> {
        Ok(self
            .w
            .conn
            .prepare_cached(
                "SELECT id, user_id, workflow, version FROM runs WHERE workspace = ?1 AND state = 'queued' \
                 ORDER BY id LIMIT 1000",
            )?
            .query_map(params![workspace], |r| {
                Ok(QueuedRun { id: r.get(0)?, user: r.get(1)?, workflow: r.get(2)?, version: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }
}

impl Writer {
    /// Waiting runs' workspaces (at most 100 per pass).
    pub(super) fn workspaces_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT DISTINCT workspace FROM runs WHERE state = 'queued' LIMIT 100")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }
}

fn read_nodes(c: &Connection, id: RunId) -> rusqlite::Result<Vec<RunNodeRow>> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM run_nodes WHERE run_id = ?1 ORDER BY node_id");
    c.prepare_cached(&sql)?.query_map(params![id], |r| runs::node_row(r))?.collect()
}

fn read_jobs(c: &Connection, id: RunId) -> rusqlite::Result<Vec<runs::RunJobRow>> {
    let sql = format!("SELECT {RUN_JOB_COLUMNS} FROM jobs WHERE run_id = ?1 ORDER BY node_id, item, id");
    c.prepare_cached(&sql)?.query_map(params![id], |r| runs::job_row(r))?.collect()
}

pub(super) fn workflows(c: &Connection, workspace: &str) -> rusqlite::Result<Vec<WorkflowSummary>> {
    c.prepare_cached(
        "SELECT name, MAX(version), MAX(created_at) FROM workflows WHERE workspace = ?1 GROUP BY name ORDER BY name",
    )?
    .query_map(params![workspace], |r| {
        Ok(WorkflowSummary { name: r.get(0)?, latest_version: r.get(1)?, created_at: r.get(2)? })
    })?
    .collect()
}

pub(super) fn workflow_versions(c: &Connection, workspace: &str, name: &str) -> rusqlite::Result<Vec<WorkflowVersion>> {
    c.prepare_cached(
        "SELECT name, version, definition, created_at, created_by FROM workflows \
         WHERE workspace = ?1 AND name = ?2 ORDER BY version",
    )?
    .query_map(params![workspace, name], |r| runs::version_row(r))?
    .collect()
}

/// One version of a workflow: `version`, or the latest when `None`.
pub(super) fn workflow_version(
    c: &Connection,
    workspace: &str,
    name: &str,
    version: Option<u32>,
) -> rusqlite::Result<Option<WorkflowVersion>> {
    c.prepare_cached(
        "SELECT name, version, definition, created_at, created_by FROM workflows \
         WHERE workspace = ?1 AND name = ?2 AND (?3 IS NULL OR version = ?3) ORDER BY version DESC LIMIT 1",
    )?
    .query_row(params![workspace, name, version], |r| runs::version_row(r))
    .optional()
}

pub(super) fn get_run(c: &Connection, workspace: &str, id: RunId) -> rusqlite::Result<Option<RunDetail>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND workspace = ?2");
    let Some(run) = c.prepare_cached(&sql)?.query_row(params![id, workspace], |r| runs::run_row(r)).optional()? else {
        return Ok(None);
    };
    let definition: Option<String> = c
        .prepare_cached("SELECT definition FROM workflows WHERE workspace = ?1 AND name = ?2 AND version = ?3")?
        .query_row(params![run.workspace, run.workflow, run.version], |r| r.get(0))
        .optional()?;
    let definition = definition.and_then(|d| serde_json::from_str(&d).ok());
    Ok(Some(RunDetail { run, definition, nodes: read_nodes(c, id)?, jobs: read_jobs(c, id)? }))
}

pub(super) fn list_runs(c: &Connection, workspace: &str, filter: &RunFilter) -> rusqlite::Result<RunPage> {
    let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE workspace = ?");
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(workspace.to_string())];
    if let Some(state) = filter.state {
        sql.push_str(" AND state = ?");
        args.push(Box::new(state.as_str()));
    }
    if let Some(w) = &filter.workflow {
        sql.push_str(" AND workflow = ?");
        args.push(Box::new(w.clone()));
    }
    if let Some(cursor) = filter.cursor {
        sql.push_str(" AND id < ?");
        args.push(Box::new(cursor));
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(Box::new(filter.limit as i64 + 1));
    let mut items: Vec<RunRow> = c
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())), |r| runs::run_row(r))?
        .collect::<rusqlite::Result<_>>()?;
    let next_cursor = if items.len() > filter.limit {
        items.truncate(filter.limit);
        items.last().map(|r| r.id)
    } else {
        None
    };
    Ok(RunPage { items, next_cursor })
}

pub(super) fn run_events(
    c: &Connection,
    workspace: &str,
    id: RunId,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Option<Vec<RunEvent>>> {
    let exists: Option<i64> = c
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1 AND workspace = ?2")?
        .query_row(params![id, workspace], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let sql = format!("SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3");
    let events = c
        .prepare_cached(&sql)?
        .query_map(params![id, after, limit as i64], |r| runs::event_row(r))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(events))
}

/// Running runs past their deadline first, then those least recently advanced.
pub(super) fn runs_to_sweep(c: &Connection, now: i64, idle_since: i64, limit: usize) -> rusqlite::Result<Vec<RunId>> {
    c.prepare_cached(
        "SELECT id FROM runs WHERE state = 'running' AND (deadline_at <= ?1 OR updated_at <= ?2) \
         ORDER BY deadline_at LIMIT ?3",
    )?
    .query_map(params![now, idle_since, limit as i64], |r| r.get(0))?
    .collect()
}
