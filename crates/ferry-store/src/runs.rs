//! Workflows and runs as stored: the values that cross the `Store` interface, and the row
//! mapping and plan-application order both backends share.
//!
//! A run advances in one transaction that holds the run (SQLite: the single writer;
//! PostgreSQL: `SELECT … FOR UPDATE` on the run's row): read the [`RunSnapshot`], ask the
//! [`Planner`], apply the [`Plan`]. In that transaction the run's event log gets, in this
//! order: the events of the jobs that triggered the advance (copied from the job log,
//! once each: `source_event` is unique), the events of the jobs the plan created or
//! cancelled, then the plan's own events (`run_finished` last). Because every write to a
//! run's log holds the run, its event ids follow commit order: a reader that resumes after
//! id N never misses an event.

use crate::row::Columns;
use ferry_core::run::{NodeRecord, NodeState, Plan, RunId, RunRecord, RunSnapshot, RunState};
use ferry_core::time::Micros;
use ferry_core::workflow::WorkflowSpec;
use ferry_core::{JobError, JobId, JobState};
use serde_json::Value;
use std::sync::Arc;

/// Decides what a run does next (see [`ferry_core::run::plan`]); the store calls it inside
/// the transaction that applies its answer.
pub type Planner = Arc<dyn Fn(&RunSnapshot) -> Plan + Send + Sync>;

/// One registered version of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowVersion {
    pub name: String,
    pub version: u32,
    pub definition: Value,
    pub created_at: Micros,
    pub created_by: String,
}

/// A workflow's latest version, for listings.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSummary {
    pub name: String,
    pub latest_version: u32,
    pub created_at: Micros,
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: RunId,
    pub workspace: String,
    pub user: String,
    pub workflow: String,
    /// `None`: the latest version.
    pub version: Option<u32>,
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request without its key: the same key with another request is a
    /// conflict.
    pub request_hash: Option<String>,
    /// The concurrency limits the run must fit in (checked unless the key matched).
    pub admission: crate::Admission,
    /// Beyond a limit, store the run `queued` (it starts when a slot frees) instead of
    /// refusing it.
    pub queue_on_limit: bool,
    /// The workspace's tokens per day: a workflow with agent nodes is refused
    /// ([`crate::StoreError::TokenBudget`]) once today's are spent.
    pub tokens_per_day: Option<u64>,
    /// How deep the run is nested: 0 through the API, the parent's depth plus one for a
    /// run a job of kind `workflow` starts (stored, never checked here: that kind
    /// bounds it).
    pub depth: u32,
}

/// What starting a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateRunOutcome {
    Created {
        id: RunId,
        version: u32,
        state: RunState,
    },
    /// The idempotency key matched this run.
    Existing {
        id: RunId,
        version: u32,
        state: RunState,
    },
    /// The key matched a run started with another request.
    Conflict {
        id: RunId,
    },
    NoWorkflow,
    NoVersion {
        latest: u32,
    },
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: RunId,
    pub workspace: String,
    pub user: String,
    pub workflow: String,
    pub version: u32,
    pub state: RunState,
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub cancel_requested: bool,
    pub created_at: Micros,
    pub deadline_at: Micros,
    pub finished_at: Option<Micros>,
    pub updated_at: Micros,
    pub error: Option<JobError>,
    /// See [`NewRun::depth`].
    pub depth: u32,
}

/// A node of a run as stored (a node not yet written is pending).
#[derive(Debug, Clone, PartialEq)]
pub struct RunNodeRow {
    pub node: String,
    pub state: NodeState,
    pub items: Option<u32>,
    pub output: Option<Value>,
    pub error: Option<JobError>,
    pub updated_at: Micros,
    /// An agent node's conversation and counters (see [`ferry_core::agent`]).
    pub agent: Option<ferry_core::agent::AgentState>,
}

/// A job of a run, with what a run view shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunJobRow {
    pub id: JobId,
    pub node: String,
    pub item: Option<u32>,
    pub state: JobState,
    /// Attempts that counted.
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<JobError>,
}

/// A run with its nodes and jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    pub run: RunRow,
    /// The definition of the run's workflow version.
    pub definition: Option<Value>,
    pub nodes: Vec<RunNodeRow>,
    pub jobs: Vec<RunJobRow>,
}

/// One entry of a run's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub id: i64,
    pub at: Micros,
    pub event_type: String,
    pub node: Option<String>,
    pub item: Option<u32>,
    pub job_id: Option<JobId>,
    pub data: Value,
}

/// Filters of a run listing.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub workflow: Option<String>,
    pub limit: usize,
    /// Runs older than this one (the previous page's last).
    pub cursor: Option<RunId>,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub items: Vec<RunRow>,
    pub next_cursor: Option<RunId>,
}

/// What advancing runs did that the caller must act on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advanced {
    /// Jobs that were running and are cancelled now: their attempts must stop.
    pub stopped: Vec<JobId>,
    /// Runs that ended, and how.
    pub finished: Vec<(RunId, RunState)>,
    /// Tokens agents used, by workspace (for `/metrics`).
    pub tokens: Vec<(String, u64)>,
}

impl Advanced {
    pub fn merge(&mut self, other: Advanced) {
        self.stopped.extend(other.stopped);
        self.finished.extend(other.finished);
        self.tokens.extend(other.tokens);
    }
}

/// `RUN_COLUMNS`: id, workspace, user_id, workflow, version, state, input, idempotency_key,
/// cancel_requested, created_at, deadline_at, finished_at, updated_at, error, depth.
/// A row of `name, version, definition, created_at, created_by` from `workflows`.
pub(crate) fn version_row<R: Columns>(r: &R) -> Result<WorkflowVersion, R::Error> {
    Ok(WorkflowVersion {
        name: r.text(0)?,
        version: r.small(1)?,
        definition: r.json(2)?,
        created_at: r.int(3)?,
        created_by: r.text(4)?,
    })
}

pub(crate) fn run_row<R: Columns>(r: &R) -> Result<RunRow, R::Error> {
    Ok(RunRow {
        id: r.uuid(0)?,
        workspace: r.text(1)?,
        user: r.text(2)?,
        workflow: r.text(3)?,
        version: r.small(4)?,
        state: r.parsed(5)?,
        input: r.json(6)?,
        idempotency_key: r.opt_text(7)?,
        cancel_requested: r.int(8)? != 0,
        created_at: r.int(9)?,
        deadline_at: r.int(10)?,
        finished_at: r.opt_int(11)?,
        updated_at: r.int(12)?,
        error: r.opt_json(13)?,
        depth: r.small(14)?,
    })
}

/// `NODE_COLUMNS`: node_id, state, items, output, error, updated_at, agent.
pub(crate) fn node_row<R: Columns>(r: &R) -> Result<RunNodeRow, R::Error> {
    Ok(RunNodeRow {
        node: r.text(0)?,
        state: r.parsed(1)?,
        items: r.opt_int(2)?.map(|n| n.max(0) as u32),
        output: r.opt_json(3)?,
        error: r.opt_json(4)?,
        updated_at: r.int(5)?,
        agent: r.opt_json(6)?,
    })
}

/// `RUN_JOB_COLUMNS`: id, node_id, item, state, attempt - attempt_base, output, error.
pub(crate) fn job_row<R: Columns>(r: &R) -> Result<RunJobRow, R::Error> {
    Ok(RunJobRow {
        id: r.uuid(0)?,
        node: r.text(1)?,
        item: r.opt_int(2)?.map(|n| n.max(0) as u32),
        state: r.parsed(3)?,
        attempts: r.small(4)?,
        output: r.opt_json(5)?,
        error: r.opt_json(6)?,
    })
}

/// `EVENT_COLUMNS`: id, at, type, node_id, item, job_id, data.
pub(crate) fn event_row<R: Columns>(r: &R) -> Result<RunEvent, R::Error> {
    Ok(RunEvent {
        id: r.int(0)?,
        at: r.int(1)?,
        event_type: r.text(2)?,
        node: r.opt_text(3)?,
        item: r.opt_int(4)?.map(|n| n.max(0) as u32),
        job_id: r.opt_uuid(5)?,
        data: r.json(6)?,
    })
}

/// The planner's view of a run, from its rows.
pub(crate) fn snapshot(
    run: &RunRow,
    definition: &Value,
    nodes: Vec<RunNodeRow>,
    jobs: Vec<RunJobRow>,
    now: Micros,
) -> Result<RunSnapshot, String> {
    let workflow = parse(definition, &run.workflow, run.version)?;
    Ok(RunSnapshot {
        run: RunRecord {
            id: run.id,
            workspace: run.workspace.clone(),
            user: run.user.clone(),
            workflow: run.workflow.clone(),
            version: run.version,
            state: run.state,
            input: run.input.clone(),
            deadline_at: run.deadline_at,
            cancel_requested: run.cancel_requested,
        },
        workflow,
        nodes: nodes
            .into_iter()
            .map(|n| {
                let rec = NodeRecord {
                    state: Some(n.state),
                    items: n.items,
                    output: n.output,
                    error: n.error,
                    agent: n.agent,
                };
                (n.node, rec)
            })
            .collect(),
        jobs: jobs
            .into_iter()
            .map(|j| ferry_core::run::RunJob {
                id: j.id,
                node: j.node,
                item: j.item,
                state: j.state,
                output: j.output,
                error: j.error,
            })
            .collect(),
        now,
        budget: Default::default(),
    })
}

/// A stored definition of `name` v`version`, read.
pub(crate) fn parse(definition: &Value, name: &str, version: u32) -> Result<WorkflowSpec, String> {
    serde_json::from_value(definition.clone())
        .map_err(|e| format!("stored definition of {name} v{version} is unreadable: {e}"))
}

/// The deadline of a run starting `now` with a timeout of `timeout_ms`
/// ([`WorkflowSpec::timeout`]).
pub(crate) fn deadline(timeout_ms: u64, now: Micros) -> Micros {
    now.saturating_add(ferry_core::time::ms(timeout_ms))
}
