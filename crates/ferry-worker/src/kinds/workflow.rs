//! `workflow`: a job that runs a workflow of its workspace and waits for the run, so that
//! a workflow node, an agent's tool or any job can run a whole workflow as one step.
//!
//! Input: `{"workflow": "research", "version": 2, "input": {"topic": "tides"}}`. Only
//! `workflow` is required; `version` defaults to the latest, `input` (an object) is the
//! run's input. Any other field is refused, naming it.
//!
//! **The run.** The attempt starts the run as the job's workspace and user, under the
//! workspace's run limits and token budget (its own, else the configured defaults), with
//! the idempotency key `job:<job id>`. Every attempt of one job therefore finds the same
//! run: an attempt retried after its worker was lost, its server drained or a store
//! error waits for the run the first attempt started instead of starting another. The
//! run's `idempotency_key` names the job that started it. The same holds for a replay of
//! the job: it finds the run it started, and answers that run's outcome again; to run the
//! workflow anew, submit a new job.
//!
//! **Waiting** costs no polling: the attempt waits on the store's event signal for the
//! run ([`ferry_store::event_signal`], what event streams wait on), reads the run's row
//! at most every 100 ms however often it is woken, and every 5 s without a signal (a
//! safety net).
//!
//! **Output** on success: `{"run": <id>, "workflow", "version", "state": "succeeded",
//! "outputs": {<node id>: <output>}}`, the outputs of the run's leaves (the nodes no
//! other node depends on).
//!
//! **Failures**, none retried except the first:
//!
//! | what | error type |
//! |---|---|
//! | the workspace's (or user's) run limit is reached | `rate_limited`, retried with the job's backoff: runs end and free slots |
//! | no such workflow, or no such version | `not_found` |
//! | today's tokens are spent (a workflow with agent nodes) | `token_budget` |
//! | the run would nest deeper than [`MAX_DEPTH`] | `validation` |
//! | the run failed, timed out or was cancelled | the run's error type (`timeout`, `cancelled` for those two), its message prefixed with `run <id>: `; the output `{"run", "workflow", "version", "state"}` |
//! | the job's own timeout | `timeout`: the run is cancelled |
//!
//! **Cancelling.** When the job is cancelled (by a user, or because the run it is a node
//! of was cancelled or timed out), its run is cancelled too. An attempt stopped for any
//! other reason (its lease lost, its server draining) leaves the run going, for the next
//! attempt to wait for. A job cancelled while no attempt runs (between retries) leaves a
//! run it started to end on its own.
//!
//! **Recursion.** A run started by this kind is one deeper than the run its job belongs
//! to (a standalone job's is depth 1; a run started through the API is depth 0), and a
//! run deeper than [`MAX_DEPTH`] is refused, so a workflow that starts itself, directly or
//! through others, ends with a `validation` failure there instead of recursing for ever.
//! The depth is kept on the run ([`ferry_store::NewRun::depth`]).
//!
//! **Where it runs.** Its jobs go to the built-in `runs` queue unless they name another
//! ([`Executor::default_queue`]), whose concurrency (100 by default) is its own: an
//! attempt holds its slot for the run's whole life, so waiting parents must never take
//! the slots of `default`, where the run's own nodes go. Runs nested in runs take `runs`
//! slots at every level. The default timeout is 65 minutes ([`DEFAULT_TIMEOUT_MS`]): a run
//! without a timeout of its own times out after an hour, and ends first.

use crate::executor::{Attempt, Executor, Runs};
use async_trait::async_trait;
use ferry_core::run::{RunId, RunState};
use ferry_core::{ErrorType, ExecError, JobId, JobState, SpecError};
use ferry_store::{CreateRunOutcome, NewRun, RunRow, StoreError, Subject};
use serde_json::{Map, Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// The deepest a run started by this kind may be nested (a run started through the API
/// is at depth 0).
pub const MAX_DEPTH: u32 = 5;
/// The timeout of a job of this kind that gives none: past a run's default hour.
pub const DEFAULT_TIMEOUT_MS: u64 = 65 * 60_000;
/// The fixed request hash of the runs this kind starts: the job's key alone says which.
const REQUEST_HASH: &str = "ferry:workflow-job";
/// The longest a wait goes without reading the run (a signal missed, or none sent).
const SAFETY_NET: Duration = Duration::from_secs(5);
/// The least time between two reads of the run, however often the signal fires.
const MIN_READ_GAP: Duration = Duration::from_millis(100);
/// The wait before reading again after a failed read.
const READ_RETRY: Duration = Duration::from_secs(1);
const FIELDS: [&str; 3] = ["workflow", "version", "input"];

/// The `workflow` kind.
pub struct Workflow;

impl Workflow {
    /// The built-in queue its jobs go to when they name none.
    pub const QUEUE: &'static str = "runs";
    /// The `runs` queue's concurrency unless `queues.runs.concurrency` says otherwise.
    pub const CONCURRENCY: usize = 100;
}

/// A job's request, checked.
#[derive(Debug, PartialEq)]
struct Request {
    workflow: String,
    version: Option<u32>,
    input: Value,
}

fn request(input: &Value) -> Result<Request, SpecError> {
    let Value::Object(map) = input else {
        return Err(SpecError::invalid("input", "must be a JSON object: {\"workflow\": NAME, …}"));
    };
    super::only_fields(input, &FIELDS, "a workflow job")?;
    let workflow = match map.get("workflow") {
        Some(Value::String(name)) if ferry_core::job::valid_name(name) => name.clone(),
        Some(_) => {
            return Err(SpecError::invalid(
                "input.workflow",
                "must be a workflow's name: 1 to 64 letters, digits, `_`, `-` or `.`",
            ));
        }
        None => return Err(SpecError::invalid("input.workflow", "is required: the workflow to run")),
    };
    let version = match map.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= 1 => Some(n),
            _ => return Err(SpecError::invalid("input.version", "must be a version number (1 or more)")),
        },
    };
    let input = match map.get("input") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(SpecError::invalid("input.input", "must be a JSON object: the run's input")),
    };
    Ok(Request { workflow, version, input })
}

/// A failure the next attempt would meet again.
fn refused(error_type: ErrorType, message: impl Into<String>) -> ExecError {
    ExecError::new(error_type, message).retryable(false)
}

/// What a store error means for the attempt: a refusal, or (unavailable, database) a
/// failure worth retrying, which finds the same run.
fn store_failure(workflow: &str, e: StoreError) -> ExecError {
    match e {
        StoreError::LimitReached(limit) => {
            ExecError::new(ErrorType::RateLimited, format!("cannot start a run of `{workflow}`: {limit}"))
        }
        e @ StoreError::TokenBudget { .. } => refused(ErrorType::TokenBudget, e.to_string()),
        e => ExecError::new(ErrorType::Internal, format!("cannot start or read the run of `{workflow}`: {e}")),
    }
}

/// The depth of the run this job would start: one more than its own run's.
async fn depth(runs: &Runs, attempt: &Attempt, workflow: &str) -> Result<u32, ExecError> {
    let Some(parent) = attempt.run else { return Ok(1) };
    let row = runs.store().run(&attempt.workspace, parent).await.map_err(|e| store_failure(workflow, e))?;
    Ok(row.map_or(1, |r| r.depth + 1))
}

/// Cancels the job's run when the engine drops the attempt because the job was
/// cancelled. A cancel fires the attempt's token before the drop, a drain does not; a
/// token fired by a lost lease leaves the job alive (another attempt waits for the run),
/// so the job's state in the store decides.
struct CancelOnDrop {
    runs: Runs,
    workspace: String,
    job: JobId,
    run: RunId,
    stopped: tokio_util::sync::CancellationToken,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed || !self.stopped.is_cancelled() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let (runs, workspace, job, run) = (self.runs.clone(), self.workspace.clone(), self.job, self.run);
        handle.spawn(async move {
            match runs.store().get_job(&workspace, job).await {
                Ok(Some(j)) if j.state == JobState::Cancelled => match runs.cancel(&workspace, run).await {
                    Ok(_) => tracing::info!(%job, %run, "job cancelled; its run is cancelled too"),
                    Err(e) => tracing::warn!(%job, %run, error = %e, "cannot cancel the run of a cancelled job"),
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(%job, %run, error = %e, "cannot read the job whose attempt stopped"),
            }
        });
    }
}

/// Waits until the run is terminal, or `deadline`; `None` at the deadline.
async fn wait(runs: &Runs, workspace: &str, id: RunId, deadline: Instant) -> Result<Option<RunRow>, ExecError> {
    let store = runs.store();
    // Watched before the first read: a commit between the two wakes the wait.
    let mut watch = store.event_signal().watch(Subject::Run(id));
    loop {
        let read_at = Instant::now();
        match store.run(workspace, id).await {
            Ok(Some(row)) if row.state.is_terminal() => return Ok(Some(row)),
            Ok(Some(_)) => {
                tokio::select! {
                    _ = watch.changed() => {}
                    _ = tokio::time::sleep(SAFETY_NET) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                tokio::time::sleep_until((read_at + MIN_READ_GAP).min(deadline)).await;
            }
            Ok(None) => return Err(refused(ErrorType::NotFound, format!("run {id} is gone"))),
            // The store is away for a moment: the run goes on without us.
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "cannot read the run; reading again");
                tokio::time::sleep_until((read_at + READ_RETRY).min(deadline)).await;
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// The outputs of the run's leaves: the nodes of its definition no other depends on.
fn leaf_outputs(definition: Option<&Value>, nodes: &[ferry_store::RunNodeRow]) -> Map<String, Value> {
    let listed = definition.and_then(|d| d.get("nodes")).and_then(Value::as_array).cloned().unwrap_or_default();
    let ids = |n: &Value| n.get("id").and_then(Value::as_str).map(str::to_string);
    let upstream: Vec<String> = listed
        .iter()
        .flat_map(|n| n.get("depends_on").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    listed
        .iter()
        .filter_map(ids)
        .filter(|id| !upstream.contains(id))
        .map(|id| {
            let output = nodes.iter().find(|n| n.node == id).and_then(|n| n.output.clone()).unwrap_or(Value::Null);
            (id, output)
        })
        .collect()
}

/// The job's failure for a run that ended without succeeding.
fn run_failure(row: &RunRow) -> ExecError {
    let (error_type, message) = match (row.state, &row.error) {
        (_, Some(e)) => (e.error_type, e.message.clone()),
        (RunState::TimedOut, None) => (ErrorType::Timeout, "the run timed out".to_string()),
        (RunState::Cancelled, None) => (ErrorType::Cancelled, "the run was cancelled".to_string()),
        (state, None) => (ErrorType::Internal, format!("the run ended {}", state.as_str())),
    };
    refused(error_type, format!("run {}: {message}", row.id)).with_output(summary(row))
}

fn summary(row: &RunRow) -> Value {
    json!({"run": row.id, "workflow": row.workflow, "version": row.version, "state": row.state})
}

#[async_trait]
impl Executor for Workflow {
    fn kind(&self) -> &'static str {
        "workflow"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        request(input).map(drop)
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let deadline = Instant::now() + attempt.timeout;
        let req = request(&input).map_err(|e| refused(ErrorType::Validation, e.to_string()))?;
        let runs = &attempt.runs;
        let depth = depth(runs, attempt, &req.workflow).await?;
        if depth > MAX_DEPTH {
            return Err(refused(
                ErrorType::Validation,
                format!(
                    "a run of `{}` would be nested {depth} deep; runs started by `workflow` jobs nest at most \
                     {MAX_DEPTH} deep (does the workflow start itself, directly or through others?)",
                    req.workflow
                ),
            ));
        }
        let limits = runs.limits(&attempt.workspace).await.map_err(|e| store_failure(&req.workflow, e))?;
        let new = NewRun {
            id: uuid::Uuid::now_v7(),
            workspace: attempt.workspace.clone(),
            user: attempt.user.clone(),
            workflow: req.workflow.clone(),
            version: req.version,
            input: req.input,
            idempotency_key: Some(format!("job:{}", attempt.job_id)),
            request_hash: Some(REQUEST_HASH.into()),
            admission: limits.runs_for(&attempt.user),
            queue_on_limit: false,
            tokens_per_day: limits.tokens_per_day,
            depth,
        };
        // Armed with the id a new run gets before it may exist: a cancel that drops the
        // attempt while the run is being created still cancels it.
        let mut guard = CancelOnDrop {
            runs: runs.clone(),
            workspace: attempt.workspace.clone(),
            job: attempt.job_id,
            run: new.id,
            stopped: attempt.cancel.clone(),
            armed: true,
        };
        let id = match runs.create(new).await.map_err(|e| store_failure(&req.workflow, e))? {
            CreateRunOutcome::Created { id, .. } | CreateRunOutcome::Existing { id, .. } => id,
            CreateRunOutcome::NoWorkflow => {
                guard.armed = false;
                return Err(refused(ErrorType::NotFound, format!("workflow `{}` not found", req.workflow)));
            }
            CreateRunOutcome::NoVersion { latest } => {
                guard.armed = false;
                let asked = req.version.unwrap_or(0);
                return Err(refused(
                    ErrorType::NotFound,
                    format!("workflow `{}` has no version {asked}; the latest is {latest}", req.workflow),
                ));
            }
            CreateRunOutcome::Conflict { id } => {
                guard.armed = false;
                return Err(refused(
                    ErrorType::Validation,
                    format!(
                        "run {id} holds this job's idempotency key (job:{}) but was started otherwise",
                        attempt.job_id
                    ),
                ));
            }
        };
        guard.run = id;
        let waited = wait(runs, &attempt.workspace, id, deadline).await;
        guard.armed = false;
        let row = match waited? {
            Some(row) => row,
            None => {
                // The job's timeout bounds the run: a retry would only find it cancelled.
                let state = runs.cancel(&attempt.workspace, id).await.ok().flatten();
                let ms = attempt.timeout.as_millis();
                return Err(refused(
                    ErrorType::Timeout,
                    format!("run {id} was cancelled at the job's timeout of {ms} ms"),
                )
                .with_output(json!({"run": id, "state": state})));
            }
        };
        if row.state != RunState::Succeeded {
            return Err(run_failure(&row));
        }
        let detail = runs
            .store()
            .get_run(&attempt.workspace, id)
            .await
            .map_err(|e| store_failure(&req.workflow, e))?
            .ok_or_else(|| refused(ErrorType::NotFound, format!("run {id} is gone")))?;
        let mut output = summary(&row);
        output["outputs"] = Value::Object(leaf_outputs(detail.definition.as_ref(), &detail.nodes));
        Ok(output)
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(DEFAULT_TIMEOUT_MS)
    }

    /// It ends its attempts at their timeout itself, to cancel the run first.
    fn enforces_timeout(&self) -> bool {
        true
    }

    fn default_queue(&self) -> Option<&'static str> {
        Some(Self::QUEUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_a_workflow_and_nothing_unknown() {
        let ok = request(&json!({"workflow": "research", "version": 2, "input": {"topic": "t"}})).unwrap();
        assert_eq!(ok, Request { workflow: "research".into(), version: Some(2), input: json!({"topic": "t"}) });
        assert_eq!(request(&json!({"workflow": "w"})).unwrap().input, Value::Null);
        let field = |v: Value| request(&v).unwrap_err().field;
        assert_eq!(field(json!({})), "input.workflow");
        assert_eq!(field(json!({"workflow": "a b"})), "input.workflow");
        assert_eq!(field(json!({"workflow": "w", "version": 0})), "input.version");
        assert_eq!(field(json!({"workflow": "w", "version": "1"})), "input.version");
        assert_eq!(field(json!({"workflow": "w", "input": [1]})), "input.input");
        assert_eq!(field(json!({"workflow": "w", "inptu": {}})), "input.inptu");
        assert_eq!(field(json!("w")), "input");
    }

    fn node(id: &str, output: Value) -> ferry_store::RunNodeRow {
        ferry_store::RunNodeRow {
            node: id.into(),
            state: ferry_core::run::NodeState::Succeeded,
            items: None,
            output: Some(output),
            error: None,
            updated_at: 0,
            agent: None,
        }
    }

    #[test]
    fn the_outputs_are_the_leaves() {
        let def = json!({"nodes": [
            {"id": "a"}, {"id": "b", "depends_on": ["a"]}, {"id": "c", "depends_on": ["a"]}, {"id": "d"}
        ]});
        let nodes = [node("a", json!(1)), node("b", json!(2)), node("c", json!(3))];
        let out = leaf_outputs(Some(&def), &nodes);
        assert_eq!(Value::Object(out), json!({"b": 2, "c": 3, "d": null}));
        assert!(leaf_outputs(None, &nodes).is_empty());
    }
}
