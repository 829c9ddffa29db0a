//! What the API answers with: the store's records rendered for clients (RFC 3339 times,
//! derived counts), each with an OpenAPI schema.

use chrono::{DateTime, Utc};
use ferry_core::time::to_datetime;
use ferry_core::{AttemptOutcome, Backoff, JobError, JobState};
use ferry_store::{AttemptRecord, Event, JobRecord, QueueStats, Submitted, WorkerInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// A job's id and state after submission.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobAccepted {
    pub id: Uuid,
    pub state: JobState,
    /// False when an idempotency key matched an existing job (answered 200, not 201).
    pub created: bool,
}

impl From<Submitted> for JobAccepted {
    fn from(s: Submitted) -> Self {
        JobAccepted { id: s.id, state: s.state, created: s.created }
    }
}

/// A batch of jobs to submit, all or nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 1000 job specs.
    pub jobs: Vec<ferry_core::JobSpec>,
}

/// The batch's jobs, in the order given.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchAccepted {
    pub jobs: Vec<JobAccepted>,
}

/// One attempt of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    /// Attempt number over the job's life, from 1.
    pub attempt: u32,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Absent while the attempt runs.
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<JobError>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            attempt: a.attempt,
            worker: a.worker,
            started_at: to_datetime(a.started_at),
            finished_at: a.finished_at.map(to_datetime),
            outcome: a.outcome,
            error: a.error,
        }
    }
}

/// A job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub input: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    /// Attempts that count against `max_attempts` since submission or the last replay.
    pub attempts_used: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the job is (or was last) due.
    pub run_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The result; for a failed attempt, whatever it left (a response, stderr).
    pub output: Option<serde_json::Value>,
    pub error: Option<JobError>,
    /// Every attempt, oldest first (omitted in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

impl JobView {
    pub fn new(j: JobRecord, with_attempts: bool) -> Self {
        JobView {
            id: j.id,
            kind: j.kind,
            queue: j.queue,
            state: j.state,
            priority: j.priority,
            input: j.input,
            labels: j.labels,
            max_attempts: j.max_attempts,
            attempts_used: j.attempt.saturating_sub(j.attempt_base),
            backoff: j.backoff,
            timeout_ms: j.timeout_ms,
            soft_timeout_ms: j.soft_timeout_ms,
            total_timeout_ms: j.total_timeout_ms,
            idempotency_key: j.idempotency_key,
            created_at: to_datetime(j.created_at),
            run_at: to_datetime(j.run_at),
            updated_at: to_datetime(j.updated_at),
            finished_at: j.finished_at.map(to_datetime),
            output: j.output,
            error: j.error,
            attempts: with_attempts.then(|| j.attempts.into_iter().map(AttemptView::from).collect()),
        }
    }
}

/// One page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// One entry of a job's event log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Increases with every event written.
    pub id: i64,
    pub job_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView { id: e.id, job_id: e.job_id, event_type: e.event_type, at: to_datetime(e.at), data: e.data }
    }
}

/// A job's events, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

/// A queue's counts: of every workspace's jobs for an operator, of the caller's own
/// workspace's jobs otherwise.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    /// Ready jobs waiting for a worker.
    pub depth: u64,
    pub running: u64,
    /// Jobs waiting for their `run_at`.
    pub scheduled: u64,
    /// Jobs waiting out a retry's backoff.
    pub retrying: u64,
    /// Jobs in the dead-letter queue.
    pub dead: u64,
    /// What the operator set at run time for the whole queue (`PUT /v1/queues/{name}`),
    /// if anything. Shown to an operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<QueueSettingsView>,
    /// The workspace whose jobs the counts are; absent when they are every workspace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// That workspace's share of the queue; absent in a server-wide view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<QueueShareView>,
}

/// A workspace's share of a queue: what its admin set for its own jobs there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueShareView {
    /// The workspace's jobs on this queue are not dispatched (other workspaces' are);
    /// submissions are still accepted. Set by the workspace's admin.
    pub paused: bool,
    /// The operator paused the whole queue: no workspace's jobs are dispatched. Read-only.
    pub queue_paused: bool,
}

/// A queue's run-time settings; `null` keeps the configured value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueSettingsView {
    /// Attempts running at once in each worker process.
    pub concurrency: Option<u32>,
    /// Most waiting jobs (0: no cap).
    pub max_depth: Option<u64>,
    /// Most attempts started per second, across every worker process.
    pub rate: Option<f64>,
    /// Nothing is dispatched while paused; submissions are still accepted.
    pub paused: bool,
}

/// The body of `PUT /v1/queues/{name}`: fields left out keep their value; `null` returns
/// a field to the configured value (no queue is configured paused: `paused: null` resumes
/// it, and a workspace's share with it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettingsRequest {
    /// Attempts running at once in each worker process.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10_000)]
    pub concurrency: Option<u32>,
    /// Most waiting jobs (0: no cap).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub max_depth: Option<u64>,
    /// Most attempts started per second, across every worker process.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1_000_000.0)]
    pub rate: Option<f64>,
    /// Nothing is dispatched while paused; submissions are still accepted.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// The body of `PUT /v1/limits/rates/{label}` (the label is the path's).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateRequest {
    /// Attempts started per second, for each value of the label.
    #[schema(exclusive_minimum = 0.0, maximum = 1_000_000.0)]
    pub rate: f64,
}

/// A workspace's rate on a label key: its jobs carrying the label start at most `rate`
/// times a second for each value of the label, across every worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelRateView {
    pub label: String,
    /// Attempts started per second, for each value of the label.
    pub rate: f64,
}

/// The workspace's rates on label keys, by label.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelRateList {
    pub rates: Vec<LabelRateView>,
}

impl From<ferry_store::LabelRate> for LabelRateView {
    fn from(r: ferry_store::LabelRate) -> Self {
        LabelRateView { label: r.label, rate: r.rate }
    }
}

impl From<ferry_store::QueueSettings> for QueueSettingsView {
    fn from(s: ferry_store::QueueSettings) -> Self {
        QueueSettingsView { concurrency: s.concurrency, max_depth: s.max_depth, rate: s.rate, paused: s.paused }
    }
}

impl From<QueueStats> for QueueView {
    fn from(s: QueueStats) -> Self {
        QueueView {
            name: s.queue,
            depth: s.queued,
            running: s.running,
            scheduled: s.scheduled,
            retrying: s.retrying,
            dead: s.dead,
            settings: None,
            workspace: None,
            share: None,
        }
    }
}

/// Every known queue.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// A job's id and its state after cancel or replay.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobStateView {
    pub id: Uuid,
    pub state: JobState,
}

/// Health answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per kind, what keeps it from running at full strength here (`exec`: the sandbox
    /// layers this host offers, which are missing, and whether `exec` jobs are accepted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// A queue a worker serves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerQueueView {
    pub name: String,
    pub concurrency: usize,
}

/// A live worker process.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// `node:pid:random`, as recorded on attempts.
    pub id: String,
    pub node: String,
    pub queues: Vec<WorkerQueueView>,
    /// Sum of the queues' concurrency.
    pub concurrency: usize,
    /// Attempts running at the last heartbeat.
    pub running: u64,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
}

impl From<WorkerInfo> for WorkerView {
    fn from(w: WorkerInfo) -> Self {
        WorkerView {
            concurrency: w.queues.iter().map(|q| q.concurrency).sum(),
            queues: w
                .queues
                .into_iter()
                .map(|q| WorkerQueueView { name: q.name, concurrency: q.concurrency })
                .collect(),
            id: w.id,
            node: w.node,
            running: w.running,
            started_at: to_datetime(w.started_at),
            last_heartbeat: to_datetime(w.last_heartbeat),
        }
    }
}

/// Every live worker.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}
