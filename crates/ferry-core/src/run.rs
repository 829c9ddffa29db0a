//! Workflow runs: their states, and the planner that decides what a run does next.
//!
//! A run executes one version of a workflow (see [`crate::workflow`]). Its nodes become
//! jobs (one per node; one per element for a `for_each` node), and the planner,
//! [`plan`], is the only place that decides what follows: which nodes start (their input
//! resolved from the run input and upstream outputs), which are skipped, when the run
//! fails, times out, is cancelled or succeeds. It is a pure function of a
//! [`RunSnapshot`]; the store reads the snapshot and applies the [`Plan`] in one
//! transaction, under a lock on the run, so two nodes advancing the same run never
//! interleave, and a crash between a job's end and its run's advance only delays the
//! advance (any later advance, or the periodic sweep, catches up: the plan is computed
//! from state, not from the event that triggered it).
//!
//! Rules:
//! - A node starts when every node it depends on succeeded. A node whose input cannot be
//!   resolved (a reference to nothing) fails with `validation`.
//! - A `for_each` node runs once per element of its array, at most `concurrency` at once;
//!   its output is the list of the elements' outputs in order; an empty array succeeds at
//!   once with `[]`. One dead element fails the node (the others are cancelled).
//! - `fail_fast`: the first failed node fails the run; running nodes are cancelled and
//!   waiting ones skipped. `continue`: nodes downstream of a failed (or skipped) node are
//!   skipped, the others go on; the run then ends `failed`.
//! - At the run's deadline, running nodes are `timed_out` and waiting ones skipped; the
//!   run is `timed_out`. A cancel does the same with `cancelled`.

use crate::job::{JobId, JobSpec, JobState, Limits, NewJob};
use crate::time::Micros;
use crate::workflow::{self, Context, FailurePolicy, WorkflowSpec};
use crate::{ErrorType, JobError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A run's identifier (UUIDv7).
pub type RunId = uuid::Uuid;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Admitted with `on_limit: "queue"` beyond a concurrency limit: starts when a slot
    /// frees, in the order runs were queued.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed_out",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            "timed_out" => RunState::TimedOut,
            _ => return Err(format!("unknown run state `{s}`")),
        })
    }
}

/// Where a node of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Waiting for its upstream nodes.
    Pending,
    /// Its job (or some of its elements' jobs) exist and are not all finished.
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Skipped => "skipped",
            NodeState::Cancelled => "cancelled",
            NodeState::TimedOut => "timed_out",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeState::Pending | NodeState::Running)
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => NodeState::Pending,
            "running" => NodeState::Running,
            "succeeded" => NodeState::Succeeded,
            "failed" => NodeState::Failed,
            "skipped" => NodeState::Skipped,
            "cancelled" => NodeState::Cancelled,
            "timed_out" => NodeState::TimedOut,
            _ => return Err(format!("unknown node state `{s}`")),
        })
    }
}

/// A run as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub workspace: String,
    pub user: String,
    pub workflow: String,
    pub version: u32,
    pub state: RunState,
    pub input: Value,
    pub deadline_at: Micros,
    /// A cancel was asked for and not yet carried out.
    pub cancel_requested: bool,
}

/// A node's recorded state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeRecord {
    pub state: Option<NodeState>,
    /// For a `for_each` node: how many elements it has (known once it started).
    pub items: Option<u32>,
    pub output: Option<Value>,
    pub error: Option<JobError>,
    /// For an `agent` node: its conversation and what it waits for.
    pub agent: Option<crate::agent::AgentState>,
}

impl NodeRecord {
    fn state(&self) -> NodeState {
        self.state.unwrap_or(NodeState::Pending)
    }
}

/// One job of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunJob {
    pub id: JobId,
    pub node: String,
    /// The element's index, for a `for_each` node.
    pub item: Option<u32>,
    pub state: JobState,
    pub output: Option<Value>,
    pub error: Option<JobError>,
}

/// Everything the planner needs, read in the transaction that will apply its plan.
#[derive(Debug, Clone)]
pub struct RunSnapshot {
    pub run: RunRecord,
    pub workflow: WorkflowSpec,
    /// Every node of the workflow, by id (missing entries are pending).
    pub nodes: BTreeMap<String, NodeRecord>,
    pub jobs: Vec<RunJob>,
    pub now: Micros,
    /// The workspace's tokens for the day (read only for workflows with agent nodes).
    pub budget: crate::agent::Budget,
}

/// A job the plan creates: a node (element) instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RunJobNew {
    pub node: String,
    pub item: Option<u32>,
    pub job: NewJob,
}

/// An event of the run's own log.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEventNew {
    pub event_type: String,
    pub node: Option<String>,
    pub data: Value,
}

/// What to change, all in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub create: Vec<RunJobNew>,
    /// Unfinished jobs to cancel (they belong to nodes that stop).
    pub cancel: Vec<JobId>,
    /// Node records to write (whole records).
    pub nodes: Vec<(String, NodeRecord)>,
    /// The run's end, if it ends now.
    pub finish: Option<(RunState, Option<JobError>)>,
    pub events: Vec<RunEventNew>,
    /// Tokens the agents' steps used, folded in by this plan: the store adds them to the
    /// workspace's day.
    pub tokens: u64,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.cancel.is_empty()
            && self.nodes.is_empty()
            && self.finish.is_none()
            && self.events.is_empty()
    }
}

/// The planner's working copy of the nodes, remembering which changed.
struct Nodes<'a> {
    records: BTreeMap<String, NodeRecord>,
    changed: std::collections::BTreeSet<String>,
    spec: &'a WorkflowSpec,
}

impl Nodes<'_> {
    fn get(&self, id: &str) -> NodeRecord {
        self.records.get(id).cloned().unwrap_or_default()
    }

    fn state(&self, id: &str) -> NodeState {
        self.records.get(id).map(NodeRecord::state).unwrap_or(NodeState::Pending)
    }

    fn set(&mut self, id: &str, record: NodeRecord) {
        self.records.insert(id.to_string(), record);
        self.changed.insert(id.to_string());
    }

    fn all_terminal(&self) -> bool {
        self.spec.nodes.iter().all(|n| self.state(&n.id).is_terminal())
    }
}

fn node_error(error_type: ErrorType, message: impl Into<String>) -> JobError {
    JobError { error_type, message: message.into(), retryable: false, severity: None }
}

fn is_active(state: JobState) -> bool {
    !matches!(state, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
}

/// Checks a node job's resolved input for its kind (the executor's validation); an error
/// fails the node with `validation`.
pub type InputCheck<'a> = &'a dyn Fn(&str, &Value) -> Result<(), String>;

/// Decides what the run does next. Pure: the same snapshot gives the same plan.
pub fn plan(snap: &RunSnapshot, limits: &Limits, check: InputCheck) -> Plan {
    let limits = &Checks { limits, check };
    let mut out = Plan::default();
    if snap.run.state != RunState::Running {
        return out;
    }
    let spec = &snap.workflow;
    let mut nodes = Nodes { records: snap.nodes.clone(), changed: Default::default(), spec };
    let mut jobs_by_node: BTreeMap<&str, Vec<&RunJob>> = BTreeMap::new();
    for j in &snap.jobs {
        jobs_by_node.entry(j.node.as_str()).or_default().push(j);
    }

    // 1. Fold the jobs' ends into their nodes; top up `for_each` nodes.
    for node in &spec.nodes {
        if nodes.state(&node.id) != NodeState::Running {
            continue;
        }
        let jobs = jobs_by_node.get(node.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if node.kind == crate::agent::KIND {
            agents::advance_node(snap, node, jobs, limits, &mut nodes, &mut out);
            continue;
        }
        let mut rec = nodes.get(&node.id);
        if let Some(failed) = jobs.iter().find(|j| matches!(j.state, JobState::Dead | JobState::Cancelled)) {
            let error =
                failed.error.clone().unwrap_or_else(|| node_error(ErrorType::Cancelled, "the job was cancelled"));
            let what = match failed.item {
                Some(i) => format!("element {i} failed: {}", error.message),
                None => error.message.clone(),
            };
            rec.state = Some(NodeState::Failed);
            rec.error = Some(JobError { message: what, ..error });
            rec.output = failed.output.clone().filter(|_| failed.item.is_none());
            out.cancel.extend(jobs.iter().filter(|j| is_active(j.state)).map(|j| j.id));
            out.events.push(RunEventNew {
                event_type: "node_failed".into(),
                node: Some(node.id.clone()),
                data: json!({ "error": rec.error }),
            });
            nodes.set(&node.id, rec);
            continue;
        }
        match node.for_each {
            None => {
                if let Some(done) = jobs.iter().find(|j| j.state == JobState::Succeeded) {
                    rec.state = Some(NodeState::Succeeded);
                    rec.output = Some(done.output.clone().unwrap_or(Value::Null));
                    nodes.set(&node.id, rec);
                }
            }
            Some(_) => {
                let items = rec.items.unwrap_or(0);
                let succeeded = jobs.iter().filter(|j| j.state == JobState::Succeeded).count() as u32;
                if succeeded >= items {
                    let mut outputs = vec![Value::Null; items as usize];
                    for j in jobs {
                        if let Some(i) = j.item.filter(|i| *i < items) {
                            outputs[i as usize] = j.output.clone().unwrap_or(Value::Null);
                        }
                    }
                    rec.state = Some(NodeState::Succeeded);
                    rec.output = Some(Value::Array(outputs));
                    out.events.push(RunEventNew {
                        event_type: "node_succeeded".into(),
                        node: Some(node.id.clone()),
                        data: json!({ "items": items }),
                    });
                    nodes.set(&node.id, rec);
                } else {
                    let active = jobs.iter().filter(|j| is_active(j.state)).count() as u32;
                    let started = jobs.len() as u32;
                    let room = concurrency(node).saturating_sub(active).min(items - started);
                    if room > 0 {
                        start_items(snap, node, started, room, limits, &nodes, &mut out);
                    }
                }
            }
        }
    }

    // 2. A deadline or a cancel stops everything.
    let stop = if snap.now >= snap.run.deadline_at {
        Some((RunState::TimedOut, NodeState::TimedOut, "run_timed_out"))
    } else if snap.run.cancel_requested {
        Some((RunState::Cancelled, NodeState::Cancelled, "run_cancelled"))
    } else {
        None
    };
    if let Some((run_state, node_state, event)) = stop {
        stop_all(snap, &mut nodes, node_state, &mut out);
        out.events.push(RunEventNew { event_type: event.into(), node: None, data: json!({}) });
        finish(&mut nodes, &mut out, run_state, None);
        return out;
    }

    // 3. Failures, then starts, until nothing changes.
    let policy = spec.failure_policy.unwrap_or_default();
    loop {
        if let Some(failed) = spec.nodes.iter().find(|n| nodes.state(&n.id) == NodeState::Failed)
            && policy == FailurePolicy::FailFast
        {
            let error = nodes.get(&failed.id).error;
            stop_all(snap, &mut nodes, NodeState::Cancelled, &mut out);
            let message = format!(
                "node `{}` failed: {}",
                failed.id,
                error.as_ref().map(|e| e.message.as_str()).unwrap_or("unknown error")
            );
            let run_error = JobError {
                error_type: error.map(|e| e.error_type).unwrap_or(ErrorType::Internal),
                message,
                retryable: false,
                severity: None,
            };
            finish(&mut nodes, &mut out, RunState::Failed, Some(run_error));
            return out;
        }
        let mut progressed = false;
        for node in &spec.nodes {
            if nodes.state(&node.id) != NodeState::Pending {
                continue;
            }
            let ups: Vec<NodeState> = node.depends_on.iter().map(|d| nodes.state(d)).collect();
            if ups.iter().any(|s| matches!(s, NodeState::Failed | NodeState::Skipped | NodeState::Cancelled)) {
                // Only under `continue` (fail_fast has stopped the run above).
                nodes.set(&node.id, NodeRecord { state: Some(NodeState::Skipped), ..Default::default() });
                out.events.push(RunEventNew {
                    event_type: "skipped".into(),
                    node: Some(node.id.clone()),
                    data: json!({ "reason": "an upstream node did not succeed" }),
                });
                progressed = true;
            } else if ups.iter().all(|s| *s == NodeState::Succeeded) {
                start_node(snap, node, limits, &mut nodes, &mut out);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }

    // 4. The end.
    if nodes.all_terminal() {
        let failed: Vec<&str> =
            spec.nodes.iter().filter(|n| nodes.state(&n.id) != NodeState::Succeeded).map(|n| n.id.as_str()).collect();
        if failed.is_empty() {
            finish(&mut nodes, &mut out, RunState::Succeeded, None);
        } else {
            // Under `continue`: the run fails with the first failed node's error type.
            let first = spec.nodes.iter().find_map(|n| nodes.get(&n.id).error);
            let error_type = first.map(|e| e.error_type).unwrap_or(ErrorType::Internal);
            let error = node_error(error_type, format!("nodes that did not succeed: {}", failed.join(", ")));
            finish(&mut nodes, &mut out, RunState::Failed, Some(error));
        }
    } else {
        flush(&mut nodes, &mut out);
    }
    out
}

fn concurrency(node: &workflow::NodeSpec) -> u32 {
    node.concurrency.unwrap_or(workflow::DEFAULT_CONCURRENCY).max(1)
}

/// The context a node's templates resolve in.
fn with_context<T>(snap: &RunSnapshot, nodes: &Nodes, item: Option<&Value>, f: impl FnOnce(&Context) -> T) -> T {
    let outputs: BTreeMap<&str, &Value> = nodes
        .records
        .iter()
        .filter(|(_, r)| r.state() == NodeState::Succeeded)
        .filter_map(|(id, r)| Some((id.as_str(), r.output.as_ref()?)))
        .collect();
    let lookup = |id: &str| outputs.get(id).copied();
    let ctx = Context { input: &snap.run.input, nodes: &lookup, item, args: None };
    f(&ctx)
}

fn fail_node(nodes: &mut Nodes, out: &mut Plan, id: &str, error: JobError) {
    out.events.push(RunEventNew {
        event_type: "node_failed".into(),
        node: Some(id.to_string()),
        data: json!({ "error": error }),
    });
    nodes.set(id, NodeRecord { state: Some(NodeState::Failed), error: Some(error), ..Default::default() });
}

/// Builds the job of one node instance, or the error that fails the node.
/// What a node job must pass before it is created.
struct Checks<'a> {
    limits: &'a Limits,
    check: InputCheck<'a>,
}

fn instance(
    snap: &RunSnapshot,
    node: &workflow::NodeSpec,
    item: Option<(u32, &Value)>,
    limits: &Checks,
    nodes: &Nodes,
) -> Result<RunJobNew, JobError> {
    let template = node.input.clone().unwrap_or(Value::Null);
    // Bounded as it goes (see `workflow::resolve`): an input past the limit fails the node
    // as a `validation` error, like the over-limit input of a literal spec below, without
    // ever being built in full.
    let max = limits.limits.max_input_bytes;
    let input = with_context(snap, nodes, item.map(|(_, v)| v), |ctx| workflow::resolve(&template, ctx, max))
        .map_err(|e| node_error(ErrorType::Validation, e.to_string()))?;
    (limits.check)(&node.kind, &input).map_err(|m| node_error(ErrorType::Validation, m))?;
    let spec: JobSpec = node.job_spec(input);
    let job = spec
        .validate(&snap.run.workspace, &snap.run.user, snap.now, limits.limits)
        .map_err(|e| node_error(ErrorType::Validation, format!("{}: {}", e.field, e.message)))?;
    Ok(RunJobNew { node: node.id.clone(), item: item.map(|(i, _)| i), job })
}

fn start_node(snap: &RunSnapshot, node: &workflow::NodeSpec, limits: &Checks, nodes: &mut Nodes, out: &mut Plan) {
    if node.kind == crate::agent::KIND {
        return agents::start_node(snap, node, limits, nodes, out);
    }
    match &node.for_each {
        None => match instance(snap, node, None, limits, nodes) {
            Ok(job) => {
                out.create.push(job);
                nodes.set(&node.id, NodeRecord { state: Some(NodeState::Running), ..Default::default() });
            }
            Err(e) => fail_node(nodes, out, &node.id, e),
        },
        Some(reference) => {
            let items = with_context(snap, nodes, None, |ctx| workflow::for_each_items(reference, ctx));
            match items {
                Err(e) => fail_node(nodes, out, &node.id, node_error(ErrorType::Validation, e.to_string())),
                Ok(items) if items.is_empty() => {
                    nodes.set(
                        &node.id,
                        NodeRecord {
                            state: Some(NodeState::Succeeded),
                            items: Some(0),
                            output: Some(json!([])),
                            error: None,
                            agent: None,
                        },
                    );
                }
                Ok(items) => {
                    let n = items.len() as u32;
                    nodes.set(
                        &node.id,
                        NodeRecord { state: Some(NodeState::Running), items: Some(n), ..Default::default() },
                    );
                    let room = concurrency(node).min(n);
                    let mut made = Vec::new();
                    for (i, value) in items.iter().enumerate().take(room as usize) {
                        match instance(snap, node, Some((i as u32, value)), limits, nodes) {
                            Ok(job) => made.push(job),
                            Err(e) => {
                                let e = JobError { message: format!("element {i}: {}", e.message), ..e };
                                return fail_node(nodes, out, &node.id, e);
                            }
                        }
                    }
                    out.create.extend(made);
                }
            }
        }
    }
}

/// Creates the next `room` elements' jobs of a running `for_each` node, from `first`.
fn start_items(
    snap: &RunSnapshot,
    node: &workflow::NodeSpec,
    first: u32,
    room: u32,
    limits: &Checks,
    nodes: &Nodes,
    out: &mut Plan,
) {
    let Some(reference) = &node.for_each else { return };
    let Ok(items) = with_context(snap, nodes, None, |ctx| workflow::for_each_items(reference, ctx)) else { return };
    for i in first..(first + room).min(items.len() as u32) {
        if let Ok(job) = instance(snap, node, Some((i, &items[i as usize])), limits, nodes) {
            out.create.push(job);
        }
    }
}

/// Stops every running node (`as_state`) and skips every pending one.
fn stop_all(snap: &RunSnapshot, nodes: &mut Nodes, as_state: NodeState, out: &mut Plan) {
    out.cancel.extend(snap.jobs.iter().filter(|j| is_active(j.state)).map(|j| j.id));
    for node in &snap.workflow.nodes {
        let next = match nodes.state(&node.id) {
            NodeState::Running => as_state,
            NodeState::Pending => NodeState::Skipped,
            _ => continue,
        };
        let mut rec = nodes.get(&node.id);
        rec.state = Some(next);
        nodes.set(&node.id, rec);
        let event = if next == NodeState::Skipped { "skipped" } else { next.as_str() };
        out.events.push(RunEventNew { event_type: event.into(), node: Some(node.id.clone()), data: json!({}) });
    }
    out.cancel.sort();
    out.cancel.dedup();
}

fn flush(nodes: &mut Nodes, out: &mut Plan) {
    for id in std::mem::take(&mut nodes.changed) {
        out.nodes.push((id.clone(), nodes.get(&id)));
    }
}

fn finish(nodes: &mut Nodes, out: &mut Plan, state: RunState, error: Option<JobError>) {
    flush(nodes, out);
    out.events.push(RunEventNew {
        event_type: "run_finished".into(),
        node: None,
        data: json!({ "state": state, "error": error }),
    });
    out.finish = Some((state, error));
}

mod agents;
#[cfg(test)]
pub(crate) mod tests;
