//! Workflows and runs on SQLite: the writer thread's run transitions (each inside the
//! group-commit transaction, which is what holds the run) and the reads.

use super::{INSERT_EVENT, Writer, parse_enum};
use crate::runs::{
    self, Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunNodeRow, RunPage, RunRow,
    WorkflowSummary, WorkflowVersion,
};
use crate::{StoreError, Subject, WorkspaceLimits, transition};
use ferry_core::run::{RunId, RunState};
use ferry_core::{JobId, JobState};
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use serde_json::{Value, json};

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

    pub(super) fn create_run(
        &mut self,
        run: NewRun,
        planner: &Planner,
    ) -> Result<(CreateRunOutcome, Advanced), StoreError> {
        if let Some(key) = &run.idempotency_key {
            let found: Option<(RunId, u32, String, Option<String>)> = self
                .conn
                .prepare_cached(
                    "SELECT id, version, state, request_hash FROM runs WHERE workspace = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![run.workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            if let Some((id, version, state, hash)) = found {
                if hash != run.request_hash {
                    return Ok((CreateRunOutcome::Conflict { id }, Advanced::default()));
                }
                let state = parse_enum(&state)?;
                return Ok((CreateRunOutcome::Existing { id, version, state }, Advanced::default()));
            }
        }
        let latest: Option<u32> = self
            .conn
            .prepare_cached("SELECT MAX(version) FROM workflows WHERE workspace = ?1 AND name = ?2")?
            .query_row(params![run.workspace, run.workflow], |r| r.get(0))?;
        let Some(latest) = latest else { return Ok((CreateRunOutcome::NoWorkflow, Advanced::default())) };
        let version = run.version.unwrap_or(latest);
        let Some(definition) = self.definition(&run.workspace, &run.workflow, version)? else {
            return Ok((CreateRunOutcome::NoVersion { latest }, Advanced::default()));
        };
        let mut refused = None;
        if !run.admission.is_unlimited() {
            let (user_now, workspace_now) = self.in_flight("runs", &run.workspace, &run.user)?;
            if let Err(limit) = run.admission.check("run", user_now, workspace_now, 1) {
                if !run.queue_on_limit {
                    return Err(limit.into());
                }
                refused = Some(limit);
            }
        }
        // A run that may wait never overtakes the workspace's runs already waiting.
        if refused.is_none() && run.queue_on_limit {
            let waiting: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM runs WHERE workspace = ?1 AND state = 'queued'")?
                .query_row(params![run.workspace], |r| r.get(0))?;
            if waiting > 0 {
                refused = Some(ferry_core::admission::LimitReached { scope: "workspace", what: "run", limit: 0 });
            }
        }
        let state = if refused.is_some() { RunState::Queued } else { RunState::Running };
        let deadline = runs::deadline(&definition, self.now);
        self.conn
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
                self.now,
                deadline,
                state.as_str(),
            ])?;
        if let Some(why) = refused {
            let reason = if why.limit == 0 { "runs of the workspace are waiting".to_string() } else { why.to_string() };
            self.run_event(run.id, "run_queued", None, json!({"reason": reason}))?;
            return Ok((CreateRunOutcome::Created { id: run.id, version, state }, Advanced::default()));
        }
        self.run_event(run.id, "run_started", None, json!({"workflow": run.workflow, "version": version}))?;
        let advanced = self.advance(run.id, planner)?;
        let state = advanced.finished.iter().find(|f| f.0 == run.id).map(|f| f.1).unwrap_or(RunState::Running);
        Ok((CreateRunOutcome::Created { id: run.id, version, state }, advanced))
    }

    pub(super) fn cancel_run(
        &mut self,
        workspace: &str,
        id: RunId,
        planner: &Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError> {
        let state: Option<String> = self
            .conn
            .prepare_cached("SELECT state FROM runs WHERE id = ?1 AND workspace = ?2")?
            .query_row(params![id, workspace], |r| r.get(0))
            .optional()?;
        let Some(state) = state else { return Ok((None, Advanced::default())) };
        let state: RunState = parse_enum(&state)?;
        if state.is_terminal() {
            return Ok((Some(state), Advanced::default()));
        }
        if state == RunState::Queued {
            // Nothing of it ever started.
            self.conn
                .prepare_cached("UPDATE runs SET state = 'cancelled', finished_at = ?2, updated_at = ?2 WHERE id = ?1")?
                .execute(params![id, self.now])?;
            self.run_event(id, "run_finished", None, json!({"state": "cancelled", "error": null}))?;
            let advanced = Advanced { finished: vec![(id, RunState::Cancelled)], ..Advanced::default() };
            return Ok((Some(RunState::Cancelled), advanced));
        }
        self.conn
            .prepare_cached("UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1")?
            .execute(params![id, self.now])?;
        let advanced = self.advance(id, planner)?;
        let state = advanced.finished.iter().find(|f| f.0 == id).map(|f| f.1).unwrap_or(state);
        Ok((Some(state), advanced))
    }

    /// Starts waiting runs that fit now, oldest first per workspace, each under its
    /// workspace's limits (`defaults` where it set none).
    pub(super) fn release_queued(
        &mut self,
        defaults: &WorkspaceLimits,
        planner: &Planner,
    ) -> Result<Advanced, StoreError> {
        let mut out = Advanced::default();
        let workspaces: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT workspace FROM runs WHERE state = 'queued' LIMIT 100")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for ws in workspaces {
            let limits = self.limits_or(&ws, defaults)?;
            let waiting: Vec<(RunId, String, String, u32)> = self
                .conn
                .prepare_cached(
                    "SELECT id, user_id, workflow, version FROM runs WHERE workspace = ?1 AND state = 'queued' \
                     ORDER BY id LIMIT 1000",
                )?
                .query_map(params![ws], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, user, workflow, version) in waiting {
                let (user_now, workspace_now) = self.in_flight("runs", &ws, &user)?;
                match limits.runs_for(&user).check("run", user_now, workspace_now, 1) {
                    Err(l) if l.scope == "workspace" => break,
                    Err(_) => continue,
                    Ok(()) => {}
                }
                let definition = self.definition(&ws, &workflow, version)?.unwrap_or(Value::Null);
                self.conn
                    .prepare_cached(
                        "UPDATE runs SET state = 'running', deadline_at = ?2, updated_at = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, runs::deadline(&definition, self.now), self.now])?;
                self.run_event(id, "run_started", None, json!({"workflow": workflow, "version": version}))?;
                out.merge(self.advance(id, planner)?);
            }
        }
        Ok(out)
    }

    fn run_event(&self, run: RunId, kind: &str, node: Option<&str>, data: Value) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT INTO run_events (run_id, at, type, node_id, data) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![run, self.now, kind, node, data.to_string()])?;
        self.touched(Subject::Run(run));
        Ok(())
    }

    fn mirror(&self, run: RunId) -> rusqlite::Result<()> {
        if self.conn.prepare_cached(MIRROR)?.execute(params![run])? > 0 {
            self.touched(Subject::Run(run));
        }
        self.conn.prepare_cached(SYNCED)?.execute(params![run])?;
        Ok(())
    }

    /// Reads the run, asks the planner, applies the plan: see [`crate::runs`].
    pub(super) fn advance(&mut self, id: RunId, planner: &Planner) -> Result<Advanced, StoreError> {
        let mut out = Advanced::default();
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        let Some(run) = self.conn.prepare_cached(&sql)?.query_row(params![id], |r| runs::run_row(r)).optional()? else {
            return Ok(out);
        };
        self.mirror(id)?;
        if run.state.is_terminal() {
            return Ok(out);
        }
        let Some(definition) = self.definition(&run.workspace, &run.workflow, run.version)? else {
            return Err(StoreError::Database(format!("run {id}: its workflow version is gone")));
        };
        let nodes = read_nodes(&self.conn, id)?;
        let jobs = read_jobs(&self.conn, id)?;
        let snap = runs::snapshot(&run, &definition, nodes, jobs, self.now).map_err(StoreError::Database)?;
        let plan = planner(&snap);
        for new in &plan.create {
            self.insert_job(&new.job, Some((id, &new.node, new.item)), None)?;
        }
        for job in &plan.cancel {
            if self.cancel_run_job(*job)? {
                out.stopped.push(*job);
            }
        }
        self.mirror(id)?;
        for (node, rec) in &plan.nodes {
            self.conn
                .prepare_cached(
                    "INSERT INTO run_nodes (run_id, node_id, state, items, output, error, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (run_id, node_id) DO UPDATE SET state = excluded.state, items = excluded.items, \
                     output = excluded.output, error = excluded.error, updated_at = excluded.updated_at",
                )?
                .execute(params![
                    id,
                    node,
                    rec.state.unwrap_or(ferry_core::run::NodeState::Pending).as_str(),
                    rec.items,
                    rec.output.as_ref().map(Value::to_string),
                    rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()),
                    self.now,
                ])?;
        }
        for e in &plan.events {
            self.run_event(id, &e.event_type, e.node.as_deref(), e.data.clone())?;
        }
        if let Some((state, error)) = &plan.finish {
            self.conn
                .prepare_cached(
                    "UPDATE runs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    state.as_str(),
                    error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()),
                    self.now
                ])?;
            out.finished.push((id, *state));
        } else if !plan.is_empty() {
            self.conn
                .prepare_cached("UPDATE runs SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![id, self.now])?;
        }
        Ok(out)
    }

    /// Cancels an unfinished job of a run; returns whether it was running.
    fn cancel_run_job(&mut self, id: JobId) -> Result<bool, StoreError> {
        let row: Option<(String, u32)> = self
            .conn
            .prepare_cached("SELECT state, attempt FROM jobs WHERE id = ?1")?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((state, attempt)) = row else { return Ok(false) };
        let state: JobState = parse_enum(&state)?;
        if state.is_final() {
            return Ok(false);
        }
        let error = transition::cancel_error();
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = 'cancelled', error = ?3, finished_at = ?4, worker_id = NULL, \
                 lease_expires_at = NULL, updated_at = ?4 WHERE id = ?1 AND state = ?2",
            )?
            .execute(params![id, state.as_str(), serde_json::to_string(&error).unwrap_or_default(), self.now])?;
        let (event, data) = transition::cancel_event(state, attempt, &error);
        self.conn.prepare_cached(INSERT_EVENT)?.execute(params![id, self.now, event, data.to_string()])?;
        self.touched(Subject::Job(id));
        Ok(state == JobState::Running)
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
    use crate::row::Columns;
    c.prepare_cached(
        "SELECT name, version, definition, created_at, created_by FROM workflows \
         WHERE workspace = ?1 AND name = ?2 ORDER BY version",
    )?
    .query_map(params![workspace, name], |r| {
        Ok(WorkflowVersion {
            name: r.get(0)?,
            version: r.get(1)?,
            definition: r.json(2)?,
            created_at: r.get(3)?,
            created_by: r.get(4)?,
        })
    })?
    .collect()
}

/// One version of a workflow: `version`, or the latest when `None`.
pub(super) fn workflow_version(
    c: &Connection,
    workspace: &str,
    name: &str,
    version: Option<u32>,
) -> rusqlite::Result<Option<WorkflowVersion>> {
    use crate::row::Columns;
    c.prepare_cached(
        "SELECT name, version, definition, created_at, created_by FROM workflows \
         WHERE workspace = ?1 AND name = ?2 AND (?3 IS NULL OR version = ?3) ORDER BY version DESC LIMIT 1",
    )?
    .query_row(params![workspace, name, version], |r| {
        Ok(WorkflowVersion {
            name: r.get(0)?,
            version: r.get(1)?,
            definition: r.json(2)?,
            created_at: r.get(3)?,
            created_by: r.get(4)?,
        })
    })
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
