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

crate::sql::statements!("../../sql/sqlite/runs.sql":
    MIRROR, SYNCED, NEXT_WORKFLOW_VERSION, INSERT_WORKFLOW,
    WORKFLOW_DEFINITION, RUN_BY_KEY, LATEST_VERSION, QUEUED_RUN_COUNT, INSERT_RUN, LOCK_RUN, INSERT_RUN_EVENT,
    PUT_NODE, FINISH_RUN, TOUCH_RUN, REQUEST_RUN_CANCEL, START_RUN, QUEUED_RUNS,
    QUEUED_RUN_WORKSPACES, RUN_NODES, RUN_JOBS, WORKFLOWS, WORKFLOW_VERSIONS, WORKFLOW_VERSION, GET_RUN, LIST_RUNS,
    RUN_EXISTS, RUN_EVENTS, RUNS_TO_SWEEP, TOKENS_USED, ADD_TOKENS,
);

impl Writer {
    pub(super) fn put_workflow(
        &mut self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: &Value,
    ) -> Result<u32, StoreError> {
        let version: u32 =
            self.conn.prepare_cached(*NEXT_WORKFLOW_VERSION)?.query_row(params![workspace, name], |r| r.get(0))?;
        self.conn.prepare_cached(*INSERT_WORKFLOW)?.execute(params![
            workspace,
            name,
            version,
            definition.to_string(),
            self.now,
            user
        ])?;
        Ok(version)
    }

    fn definition(&self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        let text: Option<String> = self
            .conn
            .prepare_cached(*WORKFLOW_DEFINITION)?
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
            .prepare_cached(*RUN_BY_KEY)?
            .query_row(params![workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        found
            .map(|(id, version, state, request_hash)| {
                Ok(KeyedRun { id, version, state: parse_enum(&state)?, request_hash })
            })
            .transpose()
    }

    async fn latest_version(&mut self, workspace: &str, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(self.w.conn.prepare_cached(*LATEST_VERSION)?.query_row(params![workspace, name], |r| r.get(0))?)
    }

    async fn definition(&mut self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        self.w.definition(workspace, name, version)
    }

    async fn runs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        self.w.in_flight("runs", workspace, user)
    }

    async fn queued_count(&mut self, workspace: &str) -> Result<u64, StoreError> {
        let n: i64 = self.w.conn.prepare_cached(*QUEUED_RUN_COUNT)?.query_row(params![workspace], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    async fn insert_run(
        &mut self,
        run: &NewRun,
        version: u32,
        state: RunState,
        deadline: Micros,
    ) -> Result<(), StoreError> {
        self.w.conn.prepare_cached(*INSERT_RUN)?.execute(params![
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
            run.depth,
        ])?;
        Ok(())
    }

    async fn lock_run(&mut self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let sql = String::from(*LOCK_RUN);
        Ok(self.w.conn.prepare_cached(&sql)?.query_row(params![id], |r| runs::run_row(r)).optional()?)
    }

    async fn run_event(&mut self, run: RunId, kind: &str, node: Option<&str>, data: &Value) -> Result<(), StoreError> {
        self.w.conn.prepare_cached(*INSERT_RUN_EVENT)?.execute(params![
            run,
            self.w.now,
            kind,
            node,
            data.to_string()
        ])?;
        self.w.touched(Subject::Run(run));
        Ok(())
    }

    async fn mirror(&mut self, run: RunId) -> Result<(), StoreError> {
        // The mirror copies the jobs' logs: they are written out first.
        self.w.flush_events()?;
        if self.w.conn.prepare_cached(*MIRROR)?.execute(params![run])? > 0 {
            self.w.touched(Subject::Run(run));
        }
        self.w.conn.prepare_cached(*SYNCED)?.execute(params![run])?;
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
        self.w.conn.prepare_cached(*PUT_NODE)?.execute(params![
            run,
            node,
            rec.state.unwrap_or(NodeState::Pending).as_str(),
            rec.items,
            rec.output.as_ref().map(Value::to_string),
            rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()),
            self.w.now,
            rec.agent.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default()),
        ])?;
        Ok(())
    }

    async fn tokens_used(&mut self, workspace: &str, day: i64) -> Result<u64, StoreError> {
        let n: i64 = self.w.conn.prepare_cached(*TOKENS_USED)?.query_row(params![workspace, day], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    async fn add_tokens(&mut self, workspace: &str, day: i64, tokens: u64) -> Result<(), StoreError> {
        self.w.conn.prepare_cached(*ADD_TOKENS)?.execute(params![workspace, day, tokens as i64])?;
        Ok(())
    }

    async fn update_run(&mut self, run: RunId, change: RunChange<'_>) -> Result<bool, StoreError> {
        let now = self.w.now;
        let c = &self.w.conn;
        let n = match change {
            RunChange::Finish { state, error } => c.prepare_cached(*FINISH_RUN)?.execute(params![
                run,
                state.as_str(),
                error.map(|e| serde_json::to_string(e).unwrap_or_default()),
                now
            ])?,
            RunChange::Touch => c.prepare_cached(*TOUCH_RUN)?.execute(params![run, now])?,
            RunChange::CancelRequested => c.prepare_cached(*REQUEST_RUN_CANCEL)?.execute(params![run, now])?,
            RunChange::Start { deadline } => c.prepare_cached(*START_RUN)?.execute(params![run, deadline, now])?,
        };
        Ok(n > 0)
    }

    async fn queued_runs(&mut self, workspace: &str) -> Result<Vec<QueuedRun>, StoreError> {
        Ok(self
            .w
            .conn
            .prepare_cached(*QUEUED_RUNS)?
            .query_map(params![workspace], |r| crate::row::queued_run(r))?
            .collect::<rusqlite::Result<_>>()?)
    }
}

impl Writer {
    /// Waiting runs' workspaces (at most 100 per pass).
    pub(super) fn workspaces_with_queued_runs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(*QUEUED_RUN_WORKSPACES)?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }
}

fn read_nodes(c: &Connection, id: RunId) -> rusqlite::Result<Vec<RunNodeRow>> {
    c.prepare_cached(&String::from(*RUN_NODES))?.query_map(params![id], |r| runs::node_row(r))?.collect()
}

fn read_jobs(c: &Connection, id: RunId) -> rusqlite::Result<Vec<runs::RunJobRow>> {
    c.prepare_cached(&String::from(*RUN_JOBS))?.query_map(params![id], |r| runs::job_row(r))?.collect()
}

pub(super) fn workflows(c: &Connection, workspace: &str) -> rusqlite::Result<Vec<WorkflowSummary>> {
    c.prepare_cached(*WORKFLOWS)?
        .query_map(params![workspace], |r| {
            Ok(WorkflowSummary { name: r.get(0)?, latest_version: r.get(1)?, created_at: r.get(2)? })
        })?
        .collect()
}

pub(super) fn workflow_versions(c: &Connection, workspace: &str, name: &str) -> rusqlite::Result<Vec<WorkflowVersion>> {
    c.prepare_cached(*WORKFLOW_VERSIONS)?.query_map(params![workspace, name], |r| runs::version_row(r))?.collect()
}

/// One version of a workflow: `version`, or the latest when `None`.
pub(super) fn workflow_version(
    c: &Connection,
    workspace: &str,
    name: &str,
    version: Option<u32>,
) -> rusqlite::Result<Option<WorkflowVersion>> {
    c.prepare_cached(*WORKFLOW_VERSION)?
        .query_row(params![workspace, name, version], |r| runs::version_row(r))
        .optional()
}

pub(super) fn run(c: &Connection, workspace: &str, id: RunId) -> rusqlite::Result<Option<RunRow>> {
    let sql = String::from(*GET_RUN);
    c.prepare_cached(&sql)?.query_row(params![id, workspace], |r| runs::run_row(r)).optional()
}

pub(super) fn get_run(c: &Connection, workspace: &str, id: RunId) -> rusqlite::Result<Option<RunDetail>> {
    let Some(run) = run(c, workspace, id)? else {
        return Ok(None);
    };
    let definition: Option<String> = c
        .prepare_cached(*WORKFLOW_DEFINITION)?
        .query_row(params![run.workspace, run.workflow, run.version], |r| r.get(0))
        .optional()?;
    let definition = definition.and_then(|d| serde_json::from_str(&d).ok());
    Ok(Some(RunDetail { run, definition, nodes: read_nodes(c, id)?, jobs: read_jobs(c, id)? }))
}

pub(super) fn list_runs(c: &Connection, workspace: &str, filter: &RunFilter) -> rusqlite::Result<RunPage> {
    // Assembled here: each filter given adds a condition and its parameter.
    let mut filters = String::new();
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(workspace.to_string())];
    if let Some(state) = filter.state {
        filters.push_str(" AND state = ?");
        args.push(Box::new(state.as_str()));
    }
    if let Some(w) = &filter.workflow {
        filters.push_str(" AND workflow = ?");
        args.push(Box::new(w.clone()));
    }
    if let Some(cursor) = filter.cursor {
        filters.push_str(" AND id < ?");
        args.push(Box::new(cursor));
    }
    args.push(Box::new(filter.limit as i64 + 1));
    let sql = String::from(*LIST_RUNS).replace("{filters}", &filters);
    let items: Vec<RunRow> = c
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())), |r| runs::run_row(r))?
        .collect::<rusqlite::Result<_>>()?;
    let (items, next_cursor) = crate::one_page(items, filter.limit, |r| r.id);
    Ok(RunPage { items, next_cursor })
}

pub(super) fn run_events(
    c: &Connection,
    workspace: &str,
    id: RunId,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Option<Vec<RunEvent>>> {
    let exists: Option<i64> =
        c.prepare_cached(*RUN_EXISTS)?.query_row(params![id, workspace], |r| r.get(0)).optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let events = c
        .prepare_cached(&String::from(*RUN_EVENTS))?
        .query_map(params![id, after, limit as i64], |r| runs::event_row(r))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(events))
}

/// Running runs past their deadline first, then those least recently advanced.
pub(super) fn runs_to_sweep(c: &Connection, now: i64, idle_since: i64, limit: usize) -> rusqlite::Result<Vec<RunId>> {
    c.prepare_cached(*RUNS_TO_SWEEP)?.query_map(params![now, idle_since, limit as i64], |r| r.get(0))?.collect()
}
