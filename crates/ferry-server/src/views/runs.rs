//! Workflows and runs: what `/v1/workflows` and `/v1/runs` take and answer, a run with
//! its nodes, and a run's event log.

use chrono::{DateTime, Utc};
use ferry_core::run::{NodeState, RunState};
use ferry_core::time::to_datetime;
use ferry_core::{JobError, JobState, OnLimit};
use ferry_store::{RunDetail, RunEvent, RunRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// A registered workflow version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowAccepted {
    pub name: String,
    pub version: u32,
}

/// A workflow in a listing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowSummaryView {
    pub name: String,
    pub latest_version: u32,
    pub updated_at: DateTime<Utc>,
}

/// The workspace's workflows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummaryView>,
}

/// One version of a workflow.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersionView {
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// A workflow and all its versions, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersions {
    pub name: String,
    pub versions: Vec<WorkflowVersionView>,
}

/// Start a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The workflow's name.
    pub workflow: String,
    /// The version to run (default: the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The run's input, `{{ input.… }}` in node inputs: an object (absent or `null`: `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Makes starting exactly-once within the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Beyond a concurrency limit: `refuse` (429, the default) or `queue` (admitted as
    /// `queued`; it starts when a slot frees, in the order runs were queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<OnLimit>,
}

/// A started (or found) run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunAccepted {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub state: RunState,
    /// `false` when an idempotency key matched an existing run.
    pub created: bool,
}

/// One job of a node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeJobView {
    pub id: Uuid,
    /// The element's index, for a `for_each` node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub state: JobState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// One node of a run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub state: NodeState,
    /// For a `for_each` node: how many elements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
    /// Attempts of the node's jobs that counted, summed.
    pub attempts: u32,
    /// The node's result (any JSON; `null` until it has one).
    pub output: Option<Value>,
    pub error: Option<JobError>,
    pub jobs: Vec<NodeJobView>,
    /// For an `agent` node: its conversation so far (kept when a kill switch ends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentView>,
}

/// An agent node's conversation and counters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// The agent holding the conversation.
    pub agent: String,
    /// Every agent that held it, in hand-off order.
    pub chain: Vec<String>,
    /// LLM steps taken.
    pub steps: u32,
    /// Answers repaired to pass the output schema.
    pub repairs: u32,
    /// Tokens used: `prompt_tokens`, `completion_tokens`, `total_tokens`.
    pub usage: Value,
    /// The messages (user, assistant, tool), without the system prompt.
    pub transcript: Vec<Value>,
}

impl From<ferry_core::agent::AgentState> for AgentView {
    fn from(a: ferry_core::agent::AgentState) -> Self {
        AgentView {
            usage: serde_json::to_value(a.usage).unwrap_or(Value::Null),
            agent: a.agent,
            chain: a.chain,
            steps: a.steps,
            repairs: a.repairs,
            transcript: a.messages,
        }
    }
}

/// A run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub workflow: String,
    pub version: u32,
    pub state: RunState,
    /// The run's input as started (any JSON).
    pub input: Value,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    /// Every node in the workflow's order (omitted in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeView>>,
}

impl RunView {
    /// A run as listed: without its nodes.
    pub fn summary(r: RunRow) -> Self {
        RunView {
            id: r.id,
            workflow: r.workflow,
            version: r.version,
            state: r.state,
            input: r.input,
            idempotency_key: r.idempotency_key,
            created_at: to_datetime(r.created_at),
            deadline_at: to_datetime(r.deadline_at),
            finished_at: r.finished_at.map(to_datetime),
            error: r.error,
            nodes: None,
        }
    }

    /// A run with every node, in the workflow's order.
    pub fn detail(d: RunDetail) -> Self {
        let order: Vec<String> = d
            .definition
            .as_ref()
            .and_then(|def| def.get("nodes"))
            .and_then(Value::as_array)
            .map(|nodes| nodes.iter().filter_map(|n| n.get("id")?.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let mut recorded: BTreeMap<String, ferry_store::RunNodeRow> =
            d.nodes.into_iter().map(|n| (n.node.clone(), n)).collect();
        let mut jobs: BTreeMap<String, Vec<ferry_store::RunJobRow>> = BTreeMap::new();
        for j in d.jobs {
            jobs.entry(j.node.clone()).or_default().push(j);
        }
        let nodes = order
            .into_iter()
            .map(|id| {
                let rec = recorded.remove(&id);
                let node_jobs = jobs.remove(&id).unwrap_or_default();
                NodeView {
                    state: rec.as_ref().map(|r| r.state).unwrap_or(NodeState::Pending),
                    items: rec.as_ref().and_then(|r| r.items),
                    attempts: node_jobs.iter().map(|j| j.attempts).sum(),
                    output: rec.as_ref().and_then(|r| r.output.clone()),
                    agent: rec.as_ref().and_then(|r| r.agent.clone()).map(AgentView::from),
                    error: rec.and_then(|r| r.error),
                    jobs: node_jobs
                        .into_iter()
                        .map(|j| NodeJobView {
                            id: j.id,
                            item: j.item,
                            state: j.state,
                            attempts: j.attempts,
                            error: j.error,
                        })
                        .collect(),
                    id,
                }
            })
            .collect();
        RunView { nodes: Some(nodes), ..RunView::summary(d.run) }
    }
}

/// One page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPageView {
    pub items: Vec<RunView>,
    pub next_cursor: Option<Uuid>,
}

/// One entry of a run's event log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunEventView {
    /// Increases with every event of the run, in commit order: resume after it.
    pub id: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// What the event carries (any JSON).
    pub data: Value,
}

impl From<RunEvent> for RunEventView {
    fn from(e: RunEvent) -> Self {
        RunEventView {
            id: e.id,
            event_type: e.event_type,
            at: to_datetime(e.at),
            node: e.node,
            item: e.item,
            job_id: e.job_id,
            data: e.data,
        }
    }
}

/// A run's events, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunEventList {
    pub events: Vec<RunEventView>,
}

/// A run's id and its state after a cancel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunStateView {
    pub id: Uuid,
    pub state: RunState,
}

/// What `POST /v1/runs` answers with 200: the run found by its idempotency key, or, with
/// `wait`, the run that ended within it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
pub enum RunAnswer {
    Accepted(RunAccepted),
    Ended(RunView),
}
