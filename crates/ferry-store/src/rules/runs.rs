//! The run rules: start a run, advance it, cancel it, release waiting runs. See
//! [`crate::runs`] for the order of a run's log, and [`super`] for how rules are shared.
//!
//! Every rule runs in one transaction of the caller's that holds the run: [`RunTx::lock_run`]
//! is `SELECT … FOR UPDATE` on PostgreSQL, and a plain read on SQLite, whose one writer
//! already holds everything.

use super::jobs::{self, JobTx};
use super::{Turn, Turns};
use crate::runs::{self, Advanced, CreateRunOutcome, NewRun, Planner, RunJobRow, RunNodeRow, RunRow};
use crate::{StoreError, WorkspaceLimits};
use async_trait::async_trait;
use ferry_core::JobError;
use ferry_core::admission::LimitReached;
use ferry_core::agent::Budget;
use ferry_core::run::{NodeRecord, RunId, RunJobNew, RunState};
use ferry_core::time::Micros;
use serde_json::{Value, json};

/// A run found by its idempotency key.
pub(crate) struct KeyedRun {
    pub id: RunId,
    pub version: u32,
    pub state: RunState,
    pub request_hash: Option<String>,
}

/// A run waiting with `on_limit: "queue"`.
pub(crate) struct QueuedRun {
    pub id: RunId,
    pub user: String,
    pub workflow: String,
    pub version: u32,
}

/// A change of a run's row.
pub(crate) enum RunChange<'a> {
    /// It ended.
    Finish { state: RunState, error: Option<&'a JobError> },
    /// Something of it changed: only `updated_at`.
    Touch,
    /// `cancel_requested`: its planner cancels it at the next advance.
    CancelRequested,
    /// A queued run starts, with this deadline; `false` if it was no longer queued.
    Start { deadline: Micros },
}

/// The statements the run rules need, one backend's implementation each, all in one
/// transaction. A backend also notes what the statements touched, for after its commit:
/// the logs written ([`RunTx::run_event`], a [`RunTx::mirror`] that copied, a cancelled
/// job's events) for event streams, and the queues that got jobs for their dispatchers.
/// The job rules' statements ([`JobTx`]) come with it: a run cancels its jobs through
/// them, and its clock is theirs (PostgreSQL reads it again after each
/// [`RunTx::lock_run`] too).
#[async_trait]
pub(crate) trait RunTx: JobTx {
    /// The run started with this idempotency key, if any; concurrent starts with one key
    /// take turns here (PostgreSQL: an advisory lock until the commit).
    async fn run_by_key(&mut self, workspace: &str, key: &str) -> Result<Option<KeyedRun>, StoreError>;
    async fn latest_version(&mut self, workspace: &str, name: &str) -> Result<Option<u32>, StoreError>;
    async fn definition(&mut self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError>;
    /// `(the user's, the workspace's)` running runs, under the workspace's admission lock
    /// on PostgreSQL (so that two starts cannot both take the last slot).
    async fn runs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError>;
    /// How many of the workspace's runs are waiting.
    async fn queued_count(&mut self, workspace: &str) -> Result<u64, StoreError>;
    async fn insert_run(
        &mut self,
        run: &NewRun,
        version: u32,
        state: RunState,
        deadline: Micros,
    ) -> Result<(), StoreError>;
    /// Locks the run for the rest of the transaction and reads it.
    async fn lock_run(&mut self, id: RunId) -> Result<Option<RunRow>, StoreError>;
    async fn run_event(&mut self, run: RunId, kind: &str, node: Option<&str>, data: &Value) -> Result<(), StoreError>;
    /// Copies the events of the run's jobs that its log lacks (see [`crate::runs`]).
    async fn mirror(&mut self, run: RunId) -> Result<(), StoreError>;
    async fn nodes(&mut self, run: RunId) -> Result<Vec<RunNodeRow>, StoreError>;
    async fn jobs(&mut self, run: RunId) -> Result<Vec<RunJobRow>, StoreError>;
    /// Creates the jobs of run nodes, with their first events, waking their queues.
    async fn create_jobs(&mut self, run: RunId, jobs: &[RunJobNew]) -> Result<(), StoreError>;
    async fn put_node(&mut self, run: RunId, node: &str, rec: &NodeRecord) -> Result<(), StoreError>;
    /// Applies `change`; whether the run's row changed.
    async fn update_run(&mut self, run: RunId, change: RunChange<'_>) -> Result<bool, StoreError>;
    /// The workspace's waiting runs, oldest first (at most 1,000).
    async fn queued_runs(&mut self, workspace: &str) -> Result<Vec<QueuedRun>, StoreError>;
    /// The tokens the workspace's agents used on UTC day `day`.
    async fn tokens_used(&mut self, workspace: &str, day: i64) -> Result<u64, StoreError>;
    /// Adds to them.
    async fn add_tokens(&mut self, workspace: &str, day: i64, tokens: u64) -> Result<(), StoreError>;
}

/// The workspace's tokens for today, for a workflow with agent nodes: what is used, and
/// the workspace's own limit when it stores one.
async fn budget(tx: &mut impl RunTx, workspace: &str) -> Result<Budget, StoreError> {
    let used_today = tx.tokens_used(workspace, Budget::day(tx.now())).await?;
    Ok(match tx.workspace_limits(workspace).await? {
        Some(limits) => Budget { used_today, per_day: limits.tokens_per_day, defaults: false },
        None => Budget { used_today, per_day: None, defaults: true },
    })
}

/// Starts a run: the idempotency key first, then the workflow version, the admission
/// check (refused, or stored `queued` with `on_limit: "queue"`), the run, and its first
/// advance.
pub(crate) async fn create(
    tx: &mut impl RunTx,
    run: NewRun,
    planner: &Planner,
) -> Result<(CreateRunOutcome, Advanced), StoreError> {
    let none = Advanced::default();
    if let Some(key) = &run.idempotency_key
        && let Some(found) = tx.run_by_key(&run.workspace, key).await?
    {
        if found.request_hash != run.request_hash {
            return Ok((CreateRunOutcome::Conflict { id: found.id }, none));
        }
        return Ok((CreateRunOutcome::Existing { id: found.id, version: found.version, state: found.state }, none));
    }
    let Some(latest) = tx.latest_version(&run.workspace, &run.workflow).await? else {
        return Ok((CreateRunOutcome::NoWorkflow, none));
    };
    let version = run.version.unwrap_or(latest);
    let Some(definition) = tx.definition(&run.workspace, &run.workflow, version).await? else {
        return Ok((CreateRunOutcome::NoVersion { latest }, none));
    };
    let spec = runs::parse(&definition, &run.workflow, version).map_err(StoreError::Database)?;
    if let Some(limit) = run.tokens_per_day
        && spec.has_agents()
    {
        let used = tx.tokens_used(&run.workspace, Budget::day(tx.now())).await?;
        if used >= limit {
            return Err(StoreError::TokenBudget { workspace: run.workspace.clone(), used, limit });
        }
    }
    let mut refused = None;
    // A run that may wait counts under the admission lock even when unlimited, so that
    // the check below and a release of waiting runs take turns.
    if !run.admission.is_unlimited() || run.queue_on_limit {
        let (user_now, workspace_now) = tx.runs_in_flight(&run.workspace, &run.user).await?;
        if let Err(limit) = run.admission.check("run", user_now, workspace_now, 1) {
            if !run.queue_on_limit {
                return Err(limit.into());
            }
            refused = Some(limit);
        }
    }
    // A run that may wait never overtakes the workspace's runs already waiting.
    if refused.is_none() && run.queue_on_limit && tx.queued_count(&run.workspace).await? > 0 {
        refused = Some(LimitReached { scope: "workspace", what: "run", limit: 0 });
    }
    let state = if refused.is_some() { RunState::Queued } else { RunState::Running };
    let deadline = runs::deadline(spec.timeout(), tx.now());
    tx.insert_run(&run, version, state, deadline).await?;
    if let Some(why) = refused {
        let reason = if why.limit == 0 { "runs of the workspace are waiting".to_string() } else { why.to_string() };
        tx.run_event(run.id, "run_queued", None, &json!({"reason": reason})).await?;
        return Ok((CreateRunOutcome::Created { id: run.id, version, state }, none));
    }
    tx.run_event(run.id, "run_started", None, &json!({"workflow": run.workflow, "version": version})).await?;
    let advanced = advance(tx, run.id, planner).await?;
    let state = advanced.finished.iter().find(|f| f.0 == run.id).map_or(RunState::Running, |f| f.1);
    Ok((CreateRunOutcome::Created { id: run.id, version, state }, advanced))
}

/// Locks the run, asks the planner, applies the plan, in the order [`crate::runs`]
/// describes.
pub(crate) async fn advance(tx: &mut impl RunTx, id: RunId, planner: &Planner) -> Result<Advanced, StoreError> {
    let mut out = Advanced::default();
    let Some(run) = tx.lock_run(id).await? else { return Ok(out) };
    tx.mirror(id).await?;
    if run.state.is_terminal() {
        return Ok(out);
    }
    let Some(definition) = tx.definition(&run.workspace, &run.workflow, run.version).await? else {
        return Err(StoreError::Database(format!("run {id}: its workflow version is gone")));
    };
    let nodes = tx.nodes(id).await?;
    let jobs = tx.jobs(id).await?;
    let mut snap = runs::snapshot(&run, &definition, nodes, jobs, tx.now()).map_err(StoreError::Database)?;
    if snap.workflow.has_agents() {
        snap.budget = budget(tx, &run.workspace).await?;
    }
    let plan = planner(&snap);
    if plan.tokens > 0 {
        tx.add_tokens(&run.workspace, Budget::day(tx.now()), plan.tokens).await?;
        out.tokens.push((run.workspace.clone(), plan.tokens));
    }
    if !plan.create.is_empty() {
        tx.create_jobs(id, &plan.create).await?;
    }
    for job in &plan.cancel {
        if jobs::cancel_node_job(tx, *job).await? {
            out.stopped.push(*job);
        }
    }
    tx.mirror(id).await?;
    for (node, rec) in &plan.nodes {
        tx.put_node(id, node, rec).await?;
    }
    for e in &plan.events {
        tx.run_event(id, &e.event_type, e.node.as_deref(), &e.data).await?;
    }
    if let Some((state, error)) = &plan.finish {
        tx.update_run(id, RunChange::Finish { state: *state, error: error.as_ref() }).await?;
        out.finished.push((id, *state));
    } else if !plan.is_empty() {
        tx.update_run(id, RunChange::Touch).await?;
    }
    Ok(out)
}

/// Cancels a run of the workspace: a waiting one ends at once (nothing of it started);
/// a running one is marked and advanced, and its planner cancels what runs. Returns its
/// state after (`None`: no such run in the workspace).
pub(crate) async fn cancel(
    tx: &mut impl RunTx,
    workspace: &str,
    id: RunId,
    planner: &Planner,
) -> Result<(Option<RunState>, Advanced), StoreError> {
    let Some(run) = tx.lock_run(id).await?.filter(|r| r.workspace == workspace) else {
        return Ok((None, Advanced::default()));
    };
    if run.state.is_terminal() {
        return Ok((Some(run.state), Advanced::default()));
    }
    if run.state == RunState::Queued {
        let state = RunState::Cancelled;
        tx.update_run(id, RunChange::Finish { state, error: None }).await?;
        tx.run_event(id, "run_finished", None, &json!({"state": "cancelled", "error": null})).await?;
        return Ok((Some(state), Advanced { finished: vec![(id, state)], ..Advanced::default() }));
    }
    tx.update_run(id, RunChange::CancelRequested).await?;
    let advanced = advance(tx, id, planner).await?;
    let state = advanced.finished.iter().find(|f| f.0 == id).map_or(run.state, |f| f.1);
    Ok((Some(state), advanced))
}

/// Starts the workspace's waiting runs that fit its limits now (`defaults` where it set
/// none), oldest first. A user refused once stays refused for this pass (a slot freed
/// meanwhile must not let that user's later run jump ahead); a full workspace ends it.
pub(crate) async fn release_queued(
    tx: &mut impl RunTx,
    workspace: &str,
    defaults: &WorkspaceLimits,
    planner: &Planner,
) -> Result<Advanced, StoreError> {
    let mut out = Advanced::default();
    let limits = tx.workspace_limits(workspace).await?.unwrap_or_else(|| defaults.clone());
    let mut turns = Turns::default();
    for run in tx.queued_runs(workspace).await? {
        if turns.refused(&run.user) {
            continue;
        }
        let (user_now, workspace_now) = tx.runs_in_flight(workspace, &run.user).await?;
        match turns.turn(&run.user, limits.runs_for(&run.user).check("run", user_now, workspace_now, 1)) {
            Turn::Stop => break,
            Turn::Skip => continue,
            Turn::Go => {}
        }
        let definition = tx.definition(workspace, &run.workflow, run.version).await?.unwrap_or(Value::Null);
        let timeout = runs::parse(&definition, &run.workflow, run.version)
            .map_or(ferry_core::workflow::DEFAULT_TIMEOUT_MS, |spec| spec.timeout());
        // The list may be older than the admission lock: another pass may have started it.
        let deadline = runs::deadline(timeout, tx.now());
        if !tx.update_run(run.id, RunChange::Start { deadline }).await? {
            continue;
        }
        tx.run_event(run.id, "run_started", None, &json!({"workflow": run.workflow, "version": run.version})).await?;
        out.merge(advance(tx, run.id, planner).await?);
    }
    Ok(out)
}
