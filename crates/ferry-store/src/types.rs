//! The values that cross the storage interface.

use ferry_core::time::Micros;
use ferry_core::{AttemptOutcome, Backoff, JobError, JobId, JobState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A submitted job's id and state, and whether this call created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: JobId,
    pub state: JobState,
    /// `false` when an idempotency key matched an existing job.
    pub created: bool,
}

/// A worker's request for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub queue: String,
    pub limit: usize,
    pub worker: String,
    /// Lease length in milliseconds.
    pub lease_ms: u64,
}

/// What a claim leased, and whether a rate held work back.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// The jobs leased, in claim order.
    pub jobs: Vec<ClaimedJob>,
    /// Set when a rate limit held back work this claim could otherwise have taken:
    /// milliseconds until a token is back (see [`crate::rate`]). Claiming sooner is futile.
    pub rate_wait_ms: Option<u64>,
}

/// A rate on a label key, set by a workspace for its own jobs (see [`crate::rate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRate {
    pub label: String,
    /// Attempts started per second, for each value of the label.
    pub rate: f64,
}

/// A job leased to a worker: what the worker needs to run it and to decide what follows.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    /// The input as stored (JSON text); parsed by the worker, off the store's writer.
    pub input: String,
    /// Attempt number across the job's whole life: the lease's fencing token.
    pub attempt: u32,
    /// Attempts that count against `max_attempts`, this one included.
    pub attempts_counted: u32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    pub deadline_at: Option<Micros>,
    /// When the job became due: start minus this is the pickup wait.
    pub run_at: Micros,
    pub soft_timeout_ms: Option<u64>,
    pub workspace: String,
    /// The user who submitted the job (or started its run).
    pub user: String,
    /// See [`ferry_core::NewJob::cache_key`].
    pub cache_key: Option<String>,
    /// The workflow run this job is a node of: its end advances the run.
    pub run_id: Option<ferry_core::run::RunId>,
    pub priority: i32,
    /// The job's own breaker key, or the one a breaker held it back under.
    pub breaker: Option<String>,
    /// Its ordering key: it may start only once its key's earlier jobs have ended.
    pub ordering_key: Option<String>,
    pub started_at: Micros,
    pub worker: Option<String>,
}

impl ClaimedJob {
    /// The order in which jobs are claimed and started: higher priority first, then the
    /// earlier due, then the older id.
    pub fn claim_order(a: &ClaimedJob, b: &ClaimedJob) -> std::cmp::Ordering {
        b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id))
    }
}

/// How a running attempt ends.
#[derive(Debug, Clone)]
pub enum FinishResult {
    Succeeded {
        output: serde_json::Value,
    },
    /// Try again `retry_in` microseconds after the attempt's end as the store records it,
    /// so the whole backoff separates the recorded end from the next start.
    Retry {
        retry_in: Micros,
        error: JobError,
        output: Option<serde_json::Value>,
    },
    /// Give up. `error` is the job's final error; `attempt_error` what this attempt failed
    /// with (they differ when the retry budget, not the attempt, ended the job).
    Dead {
        error: JobError,
        attempt_error: JobError,
        output: Option<serde_json::Value>,
    },
    /// Handed back at shutdown: the job is ready again and the attempt does not count.
    Released,
    /// Held back before the executor ran: scheduled again `retry_in` microseconds after
    /// the recorded end; the attempt does not count. See [`Wait`].
    Deferred {
        retry_in: Micros,
        wait: Wait,
    },
}

/// What a deferred job waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// Its circuit breaker, by key (kept on the job, so that the breaker's close lets it
    /// go at once); event `breaker_wait`.
    Breaker(String),
    /// The earlier job `after` of its ordering key (`None`: not known, the store could
    /// not say), to end (`Store::order_release` lets it go then); event `order_wait`.
    Order { after: Option<JobId> },
}

/// The unfinished jobs ahead of one in its ordering key ([`crate::Store::order_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderAhead {
    /// The oldest: the one that runs first.
    pub head: JobId,
    /// The one right before.
    pub nearest: JobId,
}

impl OrderAhead {
    /// What the `ORDER_AHEAD` read found: its two columns, both NULL when nothing is ahead.
    pub(crate) fn of(head: Option<JobId>, nearest: Option<JobId>) -> Option<OrderAhead> {
        head.zip(nearest).map(|(head, nearest)| OrderAhead { head, nearest })
    }
}

/// A request to end a running attempt, fenced by its attempt number.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: JobId,
    pub attempt: u32,
    pub queue: String,
    pub result: FinishResult,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; `was_running` says whether an attempt must be stopped.
    Cancelled {
        was_running: bool,
        queue: String,
        kind: String,
    },
    NotFound,
    /// The job had already finished.
    AlreadyFinal(JobState),
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    Replayed,
    NotFound,
    /// Only dead and cancelled jobs can be replayed.
    NotReplayable(JobState),
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// Only finished jobs can be deleted; cancel first.
    NotFinished(JobState),
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: String,
    pub started_at: Micros,
    pub finished_at: Option<Micros>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<JobError>,
}

/// A queue's settings changed at run time; `None` keeps the configured value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub name: String,
    /// Attempts of the queue running at once in each worker process.
    pub concurrency: Option<u32>,
    /// Most waiting jobs (0: no cap).
    pub max_depth: Option<u64>,
    /// Most attempts started per second, across every worker process (a token bucket in
    /// the store with a burst of one second's worth; see [`crate::rate`]).
    pub rate: Option<f64>,
    /// Nothing of the queue is dispatched while paused; submissions are still accepted.
    pub paused: bool,
}

/// A workspace's share of a queue: what the workspace's admin set for its own jobs there
/// (`PUT /v1/queues/{name}` by a workspace admin). Queue-wide settings ([`QueueSettings`])
/// are the server operator's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueShare {
    pub queue: String,
    pub workspace: String,
    /// The workspace's jobs on the queue are not dispatched (claims skip them, parked ones
    /// included); other workspaces' jobs are. Submissions are still accepted.
    pub paused: bool,
    /// Attempts of the workspace's jobs on the queue started per second, across every
    /// worker process (see [`crate::rate`]); `None`: no rate of its own. The queue's own
    /// rate, if any, holds as well.
    pub rate: Option<f64>,
}

/// What `ferry token reopen` did (see [`crate::Store::reopen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReopenOutcome {
    /// The store had been closed; it is open again (no token, loopback: open mode).
    Reopened,
    /// The store was not closed: it never had a token, or was reopened already.
    AlreadyOpen,
    /// Unrevoked tokens exist (this many): nothing changed; revoke them first.
    TokensRemain(u64),
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub workspace: String,
    pub user: String,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i32,
    pub input: serde_json::Value,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    pub soft_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub created_at: Micros,
    pub run_at: Micros,
    pub deadline_at: Option<Micros>,
    pub attempt: u32,
    pub attempt_base: u32,
    pub worker: Option<String>,
    pub lease_expires_at: Option<Micros>,
    pub finished_at: Option<Micros>,
    pub updated_at: Micros,
    pub output: Option<serde_json::Value>,
    pub error: Option<JobError>,
    /// See [`ClaimedJob::breaker`].
    pub breaker: Option<String>,
    /// See [`ferry_core::JobSpec::ordering_key`].
    pub ordering_key: Option<String>,
    /// Filled by [`crate::Store::get_job`]; empty in listings.
    pub attempts: Vec<AttemptRecord>,
}

/// One entry of a job's event log. Ids increase in the order events were written.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub job_id: JobId,
    pub at: Micros,
    pub event_type: String,
    pub data: serde_json::Value,
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub limit: usize,
    /// Only jobs older than this id (the previous page's last).
    pub cursor: Option<JobId>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<JobRecord>,
    pub next_cursor: Option<JobId>,
}

/// Counts for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: String,
    /// Ready and waiting for a worker.
    pub queued: u64,
    pub running: u64,
    /// Waiting for `run_at`.
    pub scheduled: u64,
    /// Waiting for a retry's backoff.
    pub retrying: u64,
    pub dead: u64,
}

/// One queue a worker serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerQueue {
    pub name: String,
    pub concurrency: usize,
}

/// A worker process as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub node: String,
    pub queues: Vec<WorkerQueue>,
    /// Set by the store when the worker registers.
    pub started_at: Micros,
    /// Set by the store on every heartbeat.
    pub last_heartbeat: Micros,
    /// Attempts running at the last heartbeat.
    pub running: u64,
}

/// The smallest UUIDv7 of the given millisecond: every id created before it sorts lower.
/// Pruning scans ids below this bound instead of keeping an index on `finished_at`.
pub fn id_floor(unix_ms: i64) -> ferry_core::JobId {
    ferry_core::JobId::from_u128((unix_ms.max(0) as u128) << 80)
}

/// A circuit breaker as the store keeps it (see `ferry_core::breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerRecord {
    pub key: String,
    pub breaker: ferry_core::breaker::Breaker,
    /// An operator's settings for this key; `None`: the configured ones.
    pub settings: Option<ferry_core::breaker::BreakerSettings>,
    /// When the state last changed.
    pub changed_at: Micros,
    pub updated_at: Micros,
}

/// What attempts through a breaker said of their target, as one process reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerReport {
    /// Successes since the process's last report, before `outcome`.
    pub successes: u32,
    /// The attempt's outcome being reported.
    pub outcome: ferry_core::breaker::Outcome,
    /// The attempt went as a probe.
    pub probe: bool,
    /// The target said it is gone for good: disable the breaker.
    pub disable: bool,
    /// The job whose attempt this was: a change of state it causes goes to its log.
    pub job: Option<JobId>,
}

/// An operator's change to a breaker.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerAction {
    /// Open now, for the next cool-down.
    Open,
    /// Closed now and as new (the counts of failures start again, the next trip's
    /// cool-down is the first one; trips and probes are kept), disabled or not: the jobs
    /// it held back go at once.
    Close,
    /// Sets (`Some`) or clears (`None`) this key's own settings.
    Settings(Option<ferry_core::breaker::BreakerSettings>),
}

/// One operation on a breaker, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerOp {
    /// May an attempt start now?
    Admit { settings: ferry_core::breaker::BreakerSettings },
    /// What an attempt (or several) said of the target.
    Report { settings: ferry_core::breaker::BreakerSettings, report: BreakerReport },
    /// An operator's change.
    Set { settings: ferry_core::breaker::BreakerSettings, action: BreakerAction },
}

/// Whether an attempt through a breaker may start ([`crate::Store::breaker_admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerAnswer {
    pub admit: ferry_core::breaker::Admit,
    /// The clock a wait's `until` is on.
    pub now: Micros,
    /// Closed, with no failure counted in its window: a process may take it for closed a
    /// little while without asking again.
    pub quiet: bool,
}

/// What a breaker operation found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerOutcome {
    /// For [`BreakerOp::Admit`]: the answer.
    pub admit: Option<ferry_core::breaker::Admit>,
    /// The breaker after the operation.
    pub record: BreakerRecord,
    /// The store's clock when it answered (a wait's `until` is on this clock).
    pub now: Micros,
}
