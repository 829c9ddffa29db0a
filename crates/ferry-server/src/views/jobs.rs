//! Jobs: what `POST /v1/jobs` and `/v1/jobs/batch` take and answer, a job with its
//! attempts, pages of jobs, and a job's event log.

use chrono::{DateTime, Utc};
use ferry_core::time::to_datetime;
use ferry_core::{AttemptOutcome, Backoff, JobError, JobState};
use ferry_store::{AttemptRecord, Event, JobRecord, Submitted};
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
    /// The circuit breaker the job goes through: its own, or its kind's (`http`: the
    /// URL's origin); absent when it goes through none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// Its ordering key: it starts only once the workspace's earlier jobs of this key
    /// have ended; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
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
            breaker: j.breaker,
            ordering_key: j.ordering_key,
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

/// A job's id and its state after cancel or replay.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobStateView {
    pub id: Uuid,
    pub state: JobState,
}

/// What `POST /v1/jobs` answers with 200: the job found by its idempotency key, or, with
/// `wait`, the job that ended within it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
pub enum JobAnswer {
    Accepted(JobAccepted),
    Ended(JobView),
}
