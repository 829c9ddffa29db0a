//! Queues, workers and health: what `/v1/queues`, `/v1/workers`, `/healthz` and `/readyz`
//! answer, and what `PUT /v1/queues/{name}` takes.

use chrono::{DateTime, Utc};
use ferry_core::time::to_datetime;
use ferry_store::{QueueStats, WorkerInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

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
    /// Attempts of the workspace's jobs on this queue started per second, across every
    /// worker process; `null`: no rate of the workspace's own (the queue's rate, if any,
    /// still holds). Set by the workspace's admin.
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub rate: Option<f64>,
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

/// What `PUT /v1/queues/{name}` changed: the queue-wide settings (an operator), or a
/// workspace's share (a workspace admin, or an operator with `?workspace=`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum QueueChange {
    Queue(QueueSettingsView),
    Share(QueueShareView),
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
    /// How long ago the counts were taken, in milliseconds: 0 unless counting is costly
    /// (a million jobs waiting), when counts are reused for a while and refreshed behind
    /// the answer so that polling stays cheap.
    pub counts_age_ms: u64,
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
