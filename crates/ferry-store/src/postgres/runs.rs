//! Workflows and runs on PostgreSQL. Every run transition is one transaction that first
//! locks the run's row (`FOR UPDATE`), so two nodes advancing one run take turns and the
//! run's event ids follow commit order.

use super::{PgStore, clock, err, insert_events, insert_jobs, parse_enum};
use crate::runs::{
    self, Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunNodeRow, RunPage, RunRow,
    WorkflowSummary, WorkflowVersion,
};
use crate::{StoreError, Subject, transition};
use ferry_core::run::{NodeState, RunId, RunState};
use ferry_core::time::Micros;
use ferry_core::{JobId, JobState};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use std::collections::BTreeSet;

const RUN_COLUMNS: &str = "id, workspace, user_id, workflow, version, state, input::text, idempotency_key, \
     cancel_requested::int, created_at, deadline_at, finished_at, updated_at, error";
const NODE_COLUMNS: &str = "node_id, state, items, output, error, updated_at";
const RUN_JOB_COLUMNS: &str = "id, node_id, item, state, attempt - attempt_base, output::text, error::text";
const EVENT_COLUMNS: &str = "id, at, type, node_id, item, job_id, data";

/// Copies the events of the run's jobs that its log does not have yet, in job-log order:
/// every job the planner can see has its events in the log before the planner's own.
const MIRROR: &str = "INSERT INTO run_events (run_id, at, type, node_id, item, job_id, source_event, data) \
     SELECT j.run_id, e.at, e.type, j.node_id, j.item, e.job_id, e.id, e.data::text \
     FROM jobs j JOIN events e ON e.job_id = j.id \
     WHERE j.run_id = $1 AND NOT j.run_synced \
       AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id) \
     ORDER BY e.id";
/// Finished jobs whose events are all copied now: later advances skip them. Checked
/// event by event: a job may have finished after the copy's snapshot.
const SYNCED: &str = "UPDATE jobs SET run_synced = true \
     WHERE run_id = $1 AND NOT run_synced AND state IN ('succeeded', 'dead', 'cancelled') \
       AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = jobs.id \
                       AND NOT EXISTS (SELECT 1 FROM run_events r WHERE r.source_event = e.id))";

type Tx = Transaction<'static, Postgres>;

fn rows<T>(rows: &[PgRow], f: impl Fn(&PgRow) -> Result<T, sqlx::Error>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect::<Result<_, sqlx::Error>>().map_err(err)
}

async fn definition(tx: &mut Tx, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT definition::text FROM workflows WHERE workspace = $1 AND name = $2 AND version = $3",
    )
    .bind(workspace)
    .bind(name)
    .bind(i64::from(version))
    .fetch_optional(&mut **tx)
    .await?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Database(e.to_string()))).transpose()
}

async fn run_event(
    tx: &mut Tx,
    now: Micros,
    run: RunId,
    kind: &str,
    node: Option<&str>,
    data: &Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO run_events (run_id, at, type, node_id, data) VALUES ($1, $2, $3, $4, $5)")
        .bind(run)
        .bind(now)
        .bind(kind)
        .bind(node)
        .bind(data.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Returns whether it copied anything.
async fn mirror(tx: &mut Tx, run: RunId) -> Result<bool, StoreError> {
    let copied = sqlx::query(MIRROR).bind(run).execute(&mut **tx).await?.rows_affected();
    sqlx::query(SYNCED).bind(run).execute(&mut **tx).await?;
    Ok(copied > 0)
}

/// What an advance changed, beyond its [`Advanced`].
#[derive(Default)]
struct Touched {
    /// Queues that got new work.
    woken: BTreeSet<String>,
    /// Logs it wrote to that an open event stream may follow.
    logs: Vec<Subject>,
}

async fn read_nodes(tx: &mut Tx, id: RunId) -> Result<Vec<RunNodeRow>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM run_nodes WHERE run_id = $1 ORDER BY node_id");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&mut **tx).await?;
    rows(&r, runs::node_row)
}

async fn read_jobs(tx: &mut Tx, id: RunId) -> Result<Vec<runs::RunJobRow>, StoreError> {
    let sql = format!("SELECT {RUN_JOB_COLUMNS} FROM jobs WHERE run_id = $1 ORDER BY node_id, item, id");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&mut **tx).await?;
    rows(&r, runs::job_row)
}

impl PgStore {
    pub(super) async fn put_workflow_tx(
        &self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: &Value,
    ) -> Result<u32, StoreError> {
        let (mut tx, now) = self.begin().await?;
        // Versions of one name are numbered under a lock on that name.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry-workflow:' || $1 || ':' || $2))")
            .bind(workspace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM workflows WHERE workspace = $1 AND name = $2",
        )
        .bind(workspace)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO workflows (workspace, name, version, definition, created_at, created_by) \
             VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
        )
        .bind(workspace)
        .bind(name)
        .bind(version)
        .bind(definition.to_string())
        .bind(now)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version as u32)
    }

    pub(super) async fn create_run_tx(
        &self,
        run: NewRun,
        planner: &Planner,
    ) -> Result<(CreateRunOutcome, Advanced), StoreError> {
        let (mut tx, now) = self.begin().await?;
        if let Some(key) = &run.idempotency_key {
            // Concurrent starts with one key take turns here.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry-run-key:' || $1 || ':' || $2))")
                .bind(&run.workspace)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let found = sqlx::query(
                "SELECT id, version, state, request_hash FROM runs WHERE workspace = $1 AND idempotency_key = $2",
            )
            .bind(&run.workspace)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = found {
                let id: RunId = row.try_get(0)?;
                let hash: Option<String> = row.try_get(3)?;
                if hash != run.request_hash {
                    return Ok((CreateRunOutcome::Conflict { id }, Advanced::default()));
                }
                let version = row.try_get::<i64, _>(1)? as u32;
                let state = parse_enum(&row.try_get::<String, _>(2)?)?;
                return Ok((CreateRunOutcome::Existing { id, version, state }, Advanced::default()));
            }
        }
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM workflows WHERE workspace = $1 AND name = $2")
                .bind(&run.workspace)
                .bind(&run.workflow)
                .fetch_one(&mut *tx)
                .await?;
        let Some(latest) = latest.map(|v| v as u32) else {
            return Ok((CreateRunOutcome::NoWorkflow, Advanced::default()));
        };
        let version = run.version.unwrap_or(latest);
        let Some(def) = definition(&mut tx, &run.workspace, &run.workflow, version).await? else {
            return Ok((CreateRunOutcome::NoVersion { latest }, Advanced::default()));
        };
        let mut refused = None;
        if !run.admission.is_unlimited() || run.queue_on_limit {
            let (user_now, workspace_now) = super::in_flight(&mut tx, "runs", &run.workspace, &run.user).await?;
            if let Err(limit) = run.admission.check("run", user_now, workspace_now, 1) {
                if !run.queue_on_limit {
                    return Err(limit.into());
                }
                refused = Some(limit);
            }
        }
        // A run that may wait never overtakes the workspace's runs already waiting.
        if refused.is_none() && run.queue_on_limit {
            let waiting: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE workspace = $1 AND state = 'queued'")
                    .bind(&run.workspace)
                    .fetch_one(&mut *tx)
                    .await?;
            if waiting > 0 {
                refused = Some(ferry_core::admission::LimitReached { scope: "workspace", what: "run", limit: 0 });
            }
        }
        let state = if refused.is_some() { RunState::Queued } else { RunState::Running };
        sqlx::query(
            "INSERT INTO runs (id, workspace, user_id, workflow, version, state, input, idempotency_key, \
             request_hash, created_at, deadline_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $11, $6::jsonb, $7, $8, $9, $10, $9)",
        )
        .bind(run.id)
        .bind(&run.workspace)
        .bind(&run.user)
        .bind(&run.workflow)
        .bind(i64::from(version))
        .bind(run.input.to_string())
        .bind(&run.idempotency_key)
        .bind(&run.request_hash)
        .bind(now)
        .bind(runs::deadline(&def, now))
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        if let Some(why) = refused {
            let reason = if why.limit == 0 { "runs of the workspace are waiting".to_string() } else { why.to_string() };
            run_event(&mut tx, now, run.id, "run_queued", None, &json!({"reason": reason})).await?;
            tx.commit().await?;
            return Ok((CreateRunOutcome::Created { id: run.id, version, state }, Advanced::default()));
        }
        run_event(&mut tx, now, run.id, "run_started", None, &json!({"workflow": run.workflow, "version": version}))
            .await?;
        // A new run's log has no stream yet: no events notification.
        let (advanced, touched) = self.advance_tx(&mut tx, run.id, planner).await?;
        tx.commit().await?;
        self.wake_locally(&touched.woken);
        let state = advanced.finished.iter().find(|f| f.0 == run.id).map(|f| f.1).unwrap_or(RunState::Running);
        Ok((CreateRunOutcome::Created { id: run.id, version, state }, advanced))
    }

    pub(super) async fn advance_runs_tx(&self, list: Vec<RunId>, planner: &Planner) -> Result<Advanced, StoreError> {
        let mut all = Advanced::default();
        // One transaction per run: a run's lock is held only for its own advance.
        for id in list {
            let mut tx = self.pool.begin().await?;
            let (advanced, touched) = self.advance_tx(&mut tx, id, planner).await?;
            tx.commit().await?;
            self.wake_locally(&touched.woken);
            self.committed(touched.logs);
            all.merge(advanced);
        }
        Ok(all)
    }

    pub(super) async fn cancel_run_tx(
        &self,
        workspace: &str,
        id: RunId,
        planner: &Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError> {
        let mut tx = self.pool.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 AND workspace = $2 FOR UPDATE")
                .bind(id)
                .bind(workspace)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(state) = state else { return Ok((None, Advanced::default())) };
        let state: RunState = parse_enum(&state)?;
        if state.is_terminal() {
            return Ok((Some(state), Advanced::default()));
        }
        if state == RunState::Queued {
            // Nothing of it ever started.
            let now = clock(&mut tx).await?;
            sqlx::query("UPDATE runs SET state = 'cancelled', finished_at = $2, updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            run_event(&mut tx, now, id, "run_finished", None, &json!({"state": "cancelled", "error": null})).await?;
            tx.commit().await?;
            self.committed([Subject::Run(id)]);
            return Ok((
                Some(RunState::Cancelled),
                Advanced { finished: vec![(id, RunState::Cancelled)], ..Advanced::default() },
            ));
        }
        sqlx::query("UPDATE runs SET cancel_requested = true WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let (advanced, touched) = self.advance_tx(&mut tx, id, planner).await?;
        tx.commit().await?;
        self.wake_locally(&touched.woken);
        self.committed(touched.logs);
        let state = advanced.finished.iter().find(|f| f.0 == id).map(|f| f.1).unwrap_or(state);
        Ok((Some(state), advanced))
    }

    /// Starts waiting runs that fit now, oldest first per workspace, one workspace per
    /// transaction under its admission lock.
    pub(super) async fn release_queued_tx(
        &self,
        defaults: &crate::WorkspaceLimits,
        planner: &Planner,
    ) -> Result<Advanced, StoreError> {
        let mut out = Advanced::default();
        let workspaces: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT workspace FROM runs WHERE state = 'queued' LIMIT 100")
                .fetch_all(&self.pool)
                .await?;
        for ws in workspaces {
            let mut tx = self.pool.begin().await?;
            let stored: Option<String> = sqlx::query_scalar("SELECT limits FROM workspace_limits WHERE workspace = $1")
                .bind(&ws)
                .fetch_optional(&mut *tx)
                .await?;
            let limits: crate::WorkspaceLimits =
                stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| defaults.clone());
            let waiting = sqlx::query(
                "SELECT id, user_id, workflow, version FROM runs WHERE workspace = $1 AND state = 'queued' \
                 ORDER BY id LIMIT 1000",
            )
            .bind(&ws)
            .fetch_all(&mut *tx)
            .await?;
            let mut all = Touched::default();
            // A user refused once stays refused for this pass: each count is a fresh
            // snapshot, and a slot freed meanwhile must not let a later run jump ahead.
            let mut refused = std::collections::HashSet::new();
            for row in &waiting {
                let (id, user, workflow): (RunId, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let version = row.try_get::<i64, _>(3)? as u32;
                if refused.contains(&user) {
                    continue;
                }
                let (user_now, workspace_now) = super::in_flight(&mut tx, "runs", &ws, &user).await?;
                match limits.runs_for(&user).check("run", user_now, workspace_now, 1) {
                    Err(l) if l.scope == "workspace" => break,
                    Err(_) => {
                        refused.insert(user);
                        continue;
                    }
                    Ok(()) => {}
                }
                let now = clock(&mut tx).await?;
                let def = definition(&mut tx, &ws, &workflow, version).await?.unwrap_or(Value::Null);
                // The list was read before the admission lock: another pass may have
                // started this run since.
                let started = sqlx::query(
                    "UPDATE runs SET state = 'running', deadline_at = $2, updated_at = $3 WHERE id = $1 AND state = 'queued'",
                )
                .bind(id)
                .bind(runs::deadline(&def, now))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if started.rows_affected() == 0 {
                    continue;
                }
                run_event(&mut tx, now, id, "run_started", None, &json!({"workflow": workflow, "version": version}))
                    .await?;
                let (advanced, touched) = self.advance_tx(&mut tx, id, planner).await?;
                all.woken.extend(touched.woken);
                // A queued run's stream follows `run_queued` with `run_started`.
                all.logs.push(Subject::Run(id));
                all.logs.extend(touched.logs);
                out.merge(advanced);
            }
            tx.commit().await?;
            self.wake_locally(&all.woken);
            self.committed(all.logs);
        }
        Ok(out)
    }

    /// Locks the run, asks the planner, applies the plan (see [`crate::runs`]). Returns
    /// what happened, the queues that got new work and the logs it wrote to.
    async fn advance_tx(&self, tx: &mut Tx, id: RunId, planner: &Planner) -> Result<(Advanced, Touched), StoreError> {
        let mut out = Advanced::default();
        let mut touched = Touched::default();
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut **tx).await? else {
            return Ok((out, touched));
        };
        let run: RunRow = runs::run_row(&row)?;
        // The clock is read once the run is locked: after whatever advanced it last.
        let now = clock(tx).await?;
        let mut wrote = mirror(tx, id).await?;
        if run.state.is_terminal() {
            if wrote {
                touched.logs.push(Subject::Run(id));
            }
            return Ok((out, touched));
        }
        let Some(def) = definition(tx, &run.workspace, &run.workflow, run.version).await? else {
            return Err(StoreError::Database(format!("run {id}: its workflow version is gone")));
        };
        let nodes = read_nodes(tx, id).await?;
        let jobs = read_jobs(tx, id).await?;
        let snap = runs::snapshot(&run, &def, nodes, jobs, now).map_err(StoreError::Database)?;
        let plan = planner(&snap);
        if !plan.create.is_empty() {
            let new: Vec<_> = plan.create.iter().map(|c| c.job.clone()).collect();
            let links: Vec<_> = plan.create.iter().map(|c| Some((id, c.node.clone(), c.item))).collect();
            let inserted = insert_jobs(tx, Some(now), &new, &links).await?;
            let mut events = Vec::with_capacity(inserted.len());
            for r in &inserted {
                let job: JobId = r.try_get(0)?;
                let state: JobState = parse_enum(&r.try_get::<String, _>(1)?)?;
                let queue: String = r.try_get(2)?;
                let (kind, data) = transition::submit_event(state, &queue, r.try_get(3)?);
                events.push((job, kind, data));
                touched.woken.insert(queue);
            }
            insert_events(tx, now, events).await?;
            self.notify(tx, &touched.woken).await?;
        }
        for job in &plan.cancel {
            if self.cancel_run_job(tx, now, *job).await? {
                out.stopped.push(*job);
            }
            touched.logs.push(Subject::Job(*job));
        }
        wrote |= mirror(tx, id).await?;
        for (node, rec) in &plan.nodes {
            sqlx::query(
                "INSERT INTO run_nodes (run_id, node_id, state, items, output, error, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (run_id, node_id) DO UPDATE SET state = excluded.state, items = excluded.items, \
                 output = excluded.output, error = excluded.error, updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(node)
            .bind(rec.state.unwrap_or(NodeState::Pending).as_str())
            .bind(rec.items.map(i64::from))
            .bind(rec.output.as_ref().map(Value::to_string))
            .bind(rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        for e in &plan.events {
            run_event(tx, now, id, &e.event_type, e.node.as_deref(), &e.data).await?;
            wrote = true;
        }
        if wrote {
            touched.logs.push(Subject::Run(id));
        }
        if let Some((state, error)) = &plan.finish {
            sqlx::query("UPDATE runs SET state = $2, error = $3, finished_at = $4, updated_at = $4 WHERE id = $1")
                .bind(id)
                .bind(state.as_str())
                .bind(error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()))
                .bind(now)
                .execute(&mut **tx)
                .await?;
            out.finished.push((id, *state));
        } else if !plan.is_empty() {
            sqlx::query("UPDATE runs SET updated_at = $2 WHERE id = $1").bind(id).bind(now).execute(&mut **tx).await?;
        }
        Ok((out, touched))
    }

    /// Cancels an unfinished job of a run; returns whether it was running (its process is
    /// told through the cancel channel when the transaction commits).
    async fn cancel_run_job(&self, tx: &mut Tx, now: Micros, id: JobId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT state, attempt FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let state: JobState = parse_enum(&row.try_get::<String, _>(0)?)?;
        if state.is_final() {
            return Ok(false);
        }
        let attempt = row.try_get::<i32, _>(1)?.max(0) as u32;
        let error = transition::cancel_error();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = $2::jsonb, finished_at = $3, worker_id = NULL, \
             lease_expires_at = NULL, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_string(&error).unwrap_or_default())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let (event, data) = transition::cancel_event(state, attempt, &error);
        insert_events(tx, now, vec![(id, event, data)]).await?;
        if state == JobState::Running {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.cancel_channel)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(state == JobState::Running)
    }

    pub(super) async fn workflows_q(&self, workspace: &str) -> Result<Vec<WorkflowSummary>, StoreError> {
        let r = sqlx::query(
            "SELECT name, MAX(version), MAX(created_at) FROM workflows WHERE workspace = $1 GROUP BY name ORDER BY name",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows(&r, |r| {
            Ok(WorkflowSummary {
                name: r.try_get(0)?,
                latest_version: r.try_get::<i64, _>(1)? as u32,
                created_at: r.try_get(2)?,
            })
        })
    }

    /// One version of a workflow: `version`, or the latest when `None`.
    pub(super) async fn workflow_version_q(
        &self,
        workspace: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowVersion>, StoreError> {
        let r = sqlx::query(
            "SELECT name, version, definition::text, created_at, created_by FROM workflows \
             WHERE workspace = $1 AND name = $2 AND ($3::int8 IS NULL OR version = $3) ORDER BY version DESC LIMIT 1",
        )
        .bind(workspace)
        .bind(name)
        .bind(version.map(i64::from))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows(&r, |r| {
            Ok(WorkflowVersion {
                name: r.try_get(0)?,
                version: r.try_get::<i64, _>(1)? as u32,
                definition: crate::row::Columns::json(r, 2)?,
                created_at: r.try_get(3)?,
                created_by: r.try_get(4)?,
            })
        })?
        .pop())
    }

    pub(super) async fn workflow_versions_q(
        &self,
        workspace: &str,
        name: &str,
    ) -> Result<Vec<WorkflowVersion>, StoreError> {
        let r = sqlx::query(
            "SELECT name, version, definition::text, created_at, created_by FROM workflows \
             WHERE workspace = $1 AND name = $2 ORDER BY version",
        )
        .bind(workspace)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows(&r, |r| {
            Ok(WorkflowVersion {
                name: r.try_get(0)?,
                version: r.try_get::<i64, _>(1)? as u32,
                definition: crate::row::Columns::json(r, 2)?,
                created_at: r.try_get(3)?,
                created_by: r.try_get(4)?,
            })
        })
    }

    pub(super) async fn get_run_q(&self, workspace: &str, id: RunId) -> Result<Option<RunDetail>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND workspace = $2");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(workspace).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let run = runs::run_row(&row)?;
        let definition = definition(&mut tx, &run.workspace, &run.workflow, run.version).await?;
        let nodes = read_nodes(&mut tx, id).await?;
        let jobs = read_jobs(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(RunDetail { run, definition, nodes, jobs }))
    }

    pub(super) async fn list_runs_q(&self, workspace: &str, filter: RunFilter) -> Result<RunPage, StoreError> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE workspace = $1");
        let mut n = 1;
        if filter.state.is_some() {
            n += 1;
            sql.push_str(&format!(" AND state = ${n}"));
        }
        if filter.workflow.is_some() {
            n += 1;
            sql.push_str(&format!(" AND workflow = ${n}"));
        }
        if filter.cursor.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(workspace);
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        if let Some(w) = &filter.workflow {
            q = q.bind(w.clone());
        }
        if let Some(c) = filter.cursor {
            q = q.bind(c);
        }
        let r = q.bind(filter.limit as i64 + 1).fetch_all(&self.pool).await?;
        let mut items = rows(&r, runs::run_row)?;
        let next_cursor = if items.len() > filter.limit {
            items.truncate(filter.limit);
            items.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { items, next_cursor })
    }

    pub(super) async fn run_events_q(
        &self,
        workspace: &str,
        id: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<RunEvent>>, StoreError> {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1 AND workspace = $2")
            .bind(id)
            .bind(workspace)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let sql = format!("SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let r =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(after).bind(limit as i64).fetch_all(&self.pool).await?;
        Ok(Some(rows(&r, runs::event_row)?))
    }

    pub(super) async fn runs_to_sweep_q(&self, idle_ms: u64, limit: usize) -> Result<Vec<RunId>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE state = 'running' \
             AND (deadline_at <= ferry_now() OR updated_at <= ferry_now() - $1) ORDER BY deadline_at LIMIT $2",
        )
        .bind(ferry_core::time::ms(idle_ms))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }
}
