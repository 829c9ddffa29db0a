//! Ferry's storage interface and its backends.
//!
//! Everything durable about a job lives behind the one [`Store`] trait: submitting,
//! claiming with a lease, finishing under a fencing token, cancelling, replaying, and the
//! reads the API serves. Each backend implements the whole trait; callers never ask which
//! backend they talk to. The SQLite backend lives in [`sqlite`].
//!
//! **Invariant:** every state change is one store transition that checks the job's current
//! state (and, for a running job, its attempt number: the fencing token) in its `WHERE`
//! clause, and writes the job's event in the same transaction. A transition that finds the
//! job elsewhere changes nothing and says so.
//!
//! **Invariant:** a call that writes returns only after its transaction committed. The
//! API answers 2xx only after that, so an acknowledged job is durable.

pub mod blobs;
pub mod escalations;
pub mod event_signal;
pub mod failures;
pub mod park;
pub mod postgres;
pub mod rate;
pub mod remote;
mod row;
mod rules;
pub mod runs;
pub mod schedules;
mod sql;
pub mod sqlite;
mod submission;
pub mod tokens;
mod transition;
mod types;

pub use blobs::{Blob, BlobBackend, BlobError, BlobRef, Blobs, BlobsConfig, Media};
pub use escalations::{Fired, Firing, Occurrence, SignalRead, Signals};
pub use event_signal::{EventSignal, EventWatch, Subject};
pub use failures::{FailureFilter, FailureGroup, FailureRow};
pub use ferry_core::admission::{Admission, LimitPair, LimitReached, WorkspaceLimits};
use ferry_core::run::{RunId, RunState};
pub use park::Parked;
pub use remote::{RemoteKind, RemoteStore};
pub use runs::{
    Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunJobRow, RunNodeRow, RunPage,
    RunRow, WorkflowSummary, WorkflowVersion,
};
pub use schedules::{
    DueSchedules, NewSchedule, ScheduleFiring, ScheduleRow, ScheduleStore, Start as ScheduleStart, StartRef,
};
pub use tokens::{NewToken, TokenRecord};
pub use types::*;

use async_trait::async_trait;
use ferry_core::time::Micros;
use ferry_core::{AttemptOutcome, JobError};
use ferry_core::{JobId, NewJob};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Per-queue wake-up signals: fired by a backend when a queue may have new work (after
/// its own commit, or on a notification from another node), awaited by dispatchers.
#[derive(Default)]
pub(crate) struct Wakeups(Mutex<HashMap<String, Arc<Notify>>>);

impl Wakeups {
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(queue.to_string()).or_default().clone()
    }

    /// Wakes every queue: after missing notifications, any queue may have work.
    pub(crate) fn all(&self) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for n in map.values() {
            n.notify_one();
        }
    }
}

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An idempotency key was reused with a different spec. `index` is the job's position
    /// in the submitted batch.
    #[error("idempotency key `{key}` was already used for a different job")]
    IdempotencyConflict { index: usize, key: String },
    /// Another process holds the data directory.
    #[error("data directory is in use by another Ferry process: {0}")]
    Locked(String),
    /// The store cannot be reached or is closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A concurrency limit refused the submission; nothing was written.
    #[error(transparent)]
    LimitReached(#[from] LimitReached),
    /// A queue holds as many waiting jobs as it may; nothing was written.
    #[error("queue `{queue}` is full: it holds {max_depth} waiting jobs at most")]
    QueueFull { queue: String, max_depth: u64 },
    /// The workspace's agents spent today's tokens (`tokens_per_day`); nothing was written.
    #[error(
        "workspace `{workspace}` used {used} of its {limit} tokens for today (tokens_per_day); agent runs start again after 00:00 UTC"
    )]
    TokenBudget { workspace: String, used: u64, limit: u64 },
    /// A database error.
    #[error("database error: {0}")]
    Database(String),
}

/// The storage interface every backend implements.
#[async_trait]
pub trait Store: ScheduleStore + RemoteStore + Send + Sync + 'static {
    /// The backend's name (`sqlite`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// Stores jobs, all or nothing. A job whose idempotency key already exists in its
    /// workspace with the same spec is answered with the existing job; with another spec
    /// the whole call fails with [`StoreError::IdempotencyConflict`].
    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, StoreError>;

    /// Makes due scheduled and retrying jobs of the queue ready, then leases up to `limit`
    /// ready jobs to `worker`, highest priority and oldest `run_at` first, each taking a
    /// token from the rate buckets it draws on (see [`rate`]); a job whose bucket is empty
    /// waits.
    async fn claim(&self, req: ClaimRequest) -> Result<Claimed, StoreError>;

    /// Leaves a claim waiting in the store until this process makes work ready in its
    /// queue; that transaction runs the claim before it commits and delivers what it
    /// leased (see [`park`]). For a dispatcher whose last claim came back short. `None`
    /// when the backend does not park.
    fn park(&self, _req: ClaimRequest) -> Option<Parked> {
        None
    }

    /// Ends a running attempt. Returns `false` (changing nothing) when the job is no longer
    /// running under that attempt number: its lease was taken over or it was cancelled.
    async fn finish(&self, fin: Finish) -> Result<bool, StoreError>;

    /// Ends several attempts in one go, each fenced on its own, answering in order. A
    /// backend that can do this in one transaction should; the default goes one by one.
    async fn finish_many(&self, fins: Vec<Finish>) -> Result<Vec<bool>, StoreError> {
        let mut applied = Vec::with_capacity(fins.len());
        for fin in fins {
            applied.push(self.finish(fin).await?);
        }
        Ok(applied)
    }

    /// Records a worker process (or refreshes its record) in the workers list.
    async fn register_worker(&self, worker: WorkerInfo) -> Result<(), StoreError>;

    /// Renews, to `lease_ms` from now (the store's clock, so nodes' clocks need not agree),
    /// the leases of the jobs in `running` that are still running under `worker`, records
    /// the heartbeat, and returns those ids. Only jobs the worker says it runs are renewed:
    /// a job it lost track of (its end could not be recorded) must expire and be retried,
    /// not stay `running` for as long as the worker lives.
    async fn heartbeat(&self, worker: &str, lease_ms: u64, running: &[JobId]) -> Result<Vec<JobId>, StoreError>;

    /// Removes a worker that stopped cleanly from the workers list.
    async fn unregister_worker(&self, worker: &str) -> Result<(), StoreError>;

    /// Workers whose last heartbeat is at most `seen_within_ms` old, by id.
    async fn workers(&self, seen_within_ms: u64) -> Result<Vec<WorkerInfo>, StoreError>;

    /// Running jobs whose lease expired, by the store's clock.
    async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError>;

    /// Deletes up to `limit` succeeded or cancelled jobs that finished more than
    /// `older_than_ms` ago, with their events (not the jobs of a run still running), up to
    /// `limit` ended runs with their nodes and logs, and forgets workers not seen for a
    /// day. Dead jobs are kept. Returns the larger of the jobs and runs deleted; callers
    /// repeat while it returns `limit`, so each transaction stays small.
    async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Cancels a job that has not finished.
    async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError>;

    /// Makes a dead or cancelled job run again with fresh attempts.
    async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError>;

    /// Deletes a finished (succeeded, dead or cancelled) job and its events: the way out
    /// of the dead-letter queue other than a replay. Unfinished jobs are refused.
    async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError>;

    /// One job with its attempts.
    async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError>;

    /// The output of the workspace's most recent job that succeeded under `cache_key` and
    /// finished at or after `finished_since`, with that job's id (a kind's result cache).
    async fn cached_output(
        &self,
        workspace: &str,
        cache_key: &str,
        finished_since: Micros,
    ) -> Result<Option<(JobId, serde_json::Value)>, StoreError>;

    /// Jobs newest first, filtered, one page at a time.
    async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError>;

    /// A job's events in order, or `None` if there is no such job.
    async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError>;

    /// The workspace's failed attempts (`attempt_failed` events) since `filter.since`
    /// that match its queue, kind and target, newest first, at most `filter.cap` of them
    /// (see [`failures`]).
    async fn failures(&self, workspace: &str, filter: FailureFilter) -> Result<Vec<FailureRow>, StoreError>;

    /// Per-queue counts of unfinished and dead jobs.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError>;

    /// Per-queue counts of one workspace's unfinished and dead jobs: what that workspace
    /// may see of the queues it shares with others.
    async fn workspace_queue_stats(&self, workspace: &str) -> Result<Vec<QueueStats>, StoreError>;

    /// The earliest `run_at` of the queue's scheduled and retrying jobs.
    async fn next_due(&self, queue: &str) -> Result<Option<Micros>, StoreError>;

    /// Registers a new version of a workflow (the first is 1) and returns its number.
    async fn put_workflow(
        &self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: serde_json::Value,
    ) -> Result<u32, StoreError>;

    /// The workspace's workflows with their latest versions, by name.
    async fn workflows(&self, workspace: &str) -> Result<Vec<WorkflowSummary>, StoreError>;

    /// Every version of one workflow, oldest first (empty: no such workflow).
    async fn workflow_versions(&self, workspace: &str, name: &str) -> Result<Vec<WorkflowVersion>, StoreError>;

    /// One version of a workflow: `version`, or the latest when `None`; `None` when there
    /// is no such workflow or version.
    async fn workflow_version(
        &self,
        workspace: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowVersion>, StoreError>;

    /// Starts a run (or finds the one its idempotency key names) and advances it once, in
    /// one transaction: its first nodes' jobs exist when this returns.
    async fn create_run(&self, run: NewRun, planner: Planner) -> Result<(CreateRunOutcome, Advanced), StoreError>;

    /// Advances each run once (see [`runs`]): its jobs' new events reach its log, then the
    /// planner decides.
    async fn advance_runs(&self, runs: Vec<RunId>, planner: Planner) -> Result<Advanced, StoreError>;

    /// Cancels a run: running nodes stop, waiting ones never start. Returns the run's state
    /// after (`None`: no such run).
    async fn cancel_run(
        &self,
        workspace: &str,
        id: RunId,
        planner: Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError>;

    /// Starts runs waiting with `on_limit: "queue"` that fit their limits now, in the
    /// order they were queued (`defaults`: the limits of a workspace that set none).
    async fn release_queued_runs(&self, defaults: WorkspaceLimits, planner: Planner) -> Result<Advanced, StoreError>;

    /// Queues (or schedules) standalone jobs held by `on_limit: "queue"` that fit their
    /// limits now, in the order they were held. Returns how many were released.
    async fn release_held_jobs(&self, defaults: WorkspaceLimits) -> Result<usize, StoreError>;

    /// Just a run's state (cheap: for event streams polling whether the run ended).
    async fn run_state(&self, workspace: &str, id: RunId) -> Result<Option<RunState>, StoreError>;

    /// A run's row alone: cheap, unlike [`Store::get_run`], which reads every node and
    /// job (a `workflow` job reads its parent's depth and watches its child with it).
    async fn run(&self, workspace: &str, id: RunId) -> Result<Option<RunRow>, StoreError>;

    /// A run with its nodes and jobs.
    async fn get_run(&self, workspace: &str, id: RunId) -> Result<Option<RunDetail>, StoreError>;

    /// Runs newest first, filtered, one page at a time.
    async fn list_runs(&self, workspace: &str, filter: RunFilter) -> Result<RunPage, StoreError>;

    /// Up to `limit` events of a run's log after id `after`, in order; `None`: no such run.
    async fn run_events(
        &self,
        workspace: &str,
        id: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<RunEvent>>, StoreError>;

    /// Running runs that need an advance nobody triggered: past their deadline, or not
    /// advanced for `idle_ms` (a crash between a job's end and its run's advance).
    async fn runs_to_sweep(&self, idle_ms: u64, limit: usize) -> Result<Vec<RunId>, StoreError>;

    /// Like [`Store::submit`], but first checks, in the same transaction, that the
    /// batch's new standalone jobs fit in `admission` beside those of the workspace and of
    /// the batch's user already in flight ([`StoreError::LimitReached`] otherwise, and
    /// nothing is written). All jobs of the batch belong to one workspace and user.
    async fn submit_admitted(&self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError>;

    /// The tokens the workspace's agents used today (UTC, by this process's clock).
    async fn tokens_today(&self, workspace: &str) -> Result<u64, StoreError>;

    /// The workspace's own concurrency limits, if it set any.
    async fn workspace_limits(&self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError>;

    /// Sets the workspace's concurrency limits.
    async fn set_workspace_limits(&self, workspace: &str, limits: WorkspaceLimits) -> Result<(), StoreError>;

    /// Every queue's run-time settings.
    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError>;

    /// Sets a queue's run-time settings (replacing what was set before).
    async fn set_queue_settings(&self, settings: QueueSettings) -> Result<(), StoreError>;

    /// The workspace's shares of queues (only those ever set), by queue.
    async fn queue_shares(&self, workspace: &str) -> Result<Vec<QueueShare>, StoreError>;

    /// Sets a workspace's share of a queue. A pause holds for every claim that starts after
    /// this returns, parked claims and other nodes included (the claim statements read the
    /// shares themselves); a resume wakes the queue's dispatchers, here and on other nodes.
    async fn set_queue_share(&self, share: QueueShare) -> Result<(), StoreError>;

    /// The workspace's rates on label keys, by label.
    async fn label_rates(&self, workspace: &str) -> Result<Vec<LabelRate>, StoreError>;

    /// Sets (`Some`) or removes (`None`) the workspace's rate on a label key. Returns
    /// whether the label had a rate before.
    async fn set_label_rate(&self, workspace: &str, label: &str, rate: Option<f64>) -> Result<bool, StoreError>;

    /// Stores a new API token (its hash).
    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError>;

    /// The workspace's tokens, revoked ones included, oldest first.
    async fn tokens(&self, workspace: &str) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revokes a token of the workspace; `false` when there is no such unrevoked token.
    async fn revoke_token(&self, workspace: &str, id: uuid::Uuid) -> Result<bool, StoreError>;

    /// The unrevoked token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// How many unrevoked tokens exist, in every workspace.
    async fn active_tokens(&self) -> Result<u64, StoreError>;

    /// Whether this store is closed to unauthenticated requests: it has had a token (the
    /// flag is set in the transaction that stores a token) and was not reopened since.
    /// Revoking every token does not reopen it.
    async fn auth_closed(&self) -> Result<bool, StoreError>;

    /// Clears the closed flag, so that a server on loopback (or `--insecure`) serves
    /// unauthenticated requests again, unless unrevoked tokens exist (checked in the same
    /// transaction; nothing changes then). Only for `ferry token reopen`, never the API.
    /// Fires [`Store::token_changes`] on every node.
    async fn reopen(&self) -> Result<ReopenOutcome, StoreError>;

    /// Fires whenever tokens may have changed (through this store, or, on PostgreSQL, in
    /// another process), so caches of them can be dropped at once.
    fn token_changes(&self) -> Option<tokio::sync::broadcast::Receiver<()>> {
        None
    }

    /// Fires after commits that wrote events, by the job or run whose log they went to
    /// (see [`event_signal`]): what event streams wait on. Events written by another
    /// process reach it too (PostgreSQL: by notification).
    fn event_signal(&self) -> Arc<EventSignal>;

    /// Notified whenever the queue may have new ready or newly scheduled work.
    fn wakeup(&self, queue: &str) -> Arc<Notify>;

    /// Ids of running jobs that were cancelled through another process, as they happen, so
    /// the process running the attempt can stop it at once instead of at its next
    /// heartbeat. `None` when the backend has no such channel (SQLite: one process, whose
    /// API stops the attempt itself).
    fn cancellations(&self) -> Option<tokio::sync::broadcast::Receiver<JobId>> {
        None
    }

    /// Applies one operation to the circuit breaker `key` in one transaction that locks
    /// its row (see `rules::breakers`), so that every process sees one breaker and
    /// transitions never race.
    async fn breaker(&self, key: &str, op: BreakerOp) -> Result<BreakerOutcome, StoreError>;

    /// The breakers the store keeps (only `key`'s when given), by key.
    async fn breakers(&self, key: Option<&str>) -> Result<Vec<BreakerRecord>, StoreError>;

    /// Whether an attempt through the breaker `key` may start now: from a plain read when
    /// the answer changes nothing (closed, open before its time, disabled), else through
    /// [`Store::breaker`]. A plain read's wait is measured on this process's clock.
    async fn breaker_admit(
        &self,
        key: &str,
        settings: &ferry_core::breaker::BreakerSettings,
    ) -> Result<BreakerAnswer, StoreError> {
        let now = ferry_core::time::now_micros();
        let found = self.breakers(Some(key)).await?;
        if let Some(admit) = rules::breakers::peek(found.first(), settings, now) {
            return Ok(BreakerAnswer { admit, now, quiet: rules::breakers::quiet(found.first()) });
        }
        let out = self.breaker(key, BreakerOp::Admit { settings: settings.clone() }).await?;
        let admit = out.admit.unwrap_or(ferry_core::breaker::Admit::Go);
        Ok(BreakerAnswer { admit, now: out.now, quiet: rules::breakers::quiet(Some(&out.record)) })
    }

    /// The unfinished jobs of `workspace` under the ordering key `key` submitted before
    /// the job `id`; `None` when there is none, so that `id` may start.
    async fn order_ahead(&self, workspace: &str, key: &str, id: JobId) -> Result<Option<OrderAhead>, StoreError>;

    /// Lets the next job of `workspace`'s ordering key `key` go, if an attempt held back
    /// left it waiting (see `rules::jobs::order_release`); returns it.
    async fn order_release(&self, workspace: &str, key: &str) -> Result<Option<JobId>, StoreError>;

    /// The store's blobs (see [`blobs`]): files in the data directory on SQLite, a table
    /// every node reaches on PostgreSQL. Callers use them through [`Blobs`].
    fn blobs(&self) -> Arc<dyn BlobBackend>;

    /// What escalation rules read: every workspace's failed attempts, dead jobs and opened
    /// breakers within `read.look_back_ms` of the store's clock, but the escalation
    /// workspace's (see [`escalations`]).
    async fn escalation_signals(&self, read: SignalRead) -> Result<Signals, StoreError>;

    /// Fires an escalation: records it and stores its job in one transaction, unless its
    /// group fired less than its window ago (`None` then: another node, or an earlier
    /// evaluation, fired it). See [`escalations`].
    async fn escalate(&self, firing: Firing) -> Result<Option<Fired>, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes pending writes and stops the store's background work.
    async fn close(&self);
}

/// The paging rule of every list, newest first: a list reads one row more than `limit`;
/// if it came, the page is cut to `limit` and the next page starts below the last id kept.
pub(crate) fn one_page<T>(
    mut items: Vec<T>,
    limit: usize,
    id: impl Fn(&T) -> uuid::Uuid,
) -> (Vec<T>, Option<uuid::Uuid>) {
    if items.len() <= limit {
        return (items, None);
    }
    items.truncate(limit);
    let next = items.last().map(id);
    (items, next)
}

/// A job's attempts, read from its event log: each `started` event opens attempt `n`; the
/// first later `succeeded`, `attempt_failed`, `released`, `breaker_wait`, `order_wait` or `cancelled` event carrying the
/// same `attempt` closes it. Keeping attempts in the log instead of a table of their own
/// saves two writes per job, and the two can never disagree.
pub fn attempts_from_events(events: &[Event]) -> Vec<AttemptRecord> {
    let mut attempts: Vec<AttemptRecord> = Vec::new();
    for e in events {
        let Some(n) = e.data.get("attempt").and_then(|a| a.as_u64()).map(|a| a as u32) else { continue };
        if e.event_type == "started" {
            attempts.push(AttemptRecord {
                attempt: n,
                worker: e.data.get("worker").and_then(|w| w.as_str()).unwrap_or_default().to_string(),
                started_at: e.at,
                finished_at: None,
                outcome: None,
                error: None,
            });
            continue;
        }
        let outcome = match e.event_type.as_str() {
            "succeeded" => AttemptOutcome::Succeeded,
            "attempt_failed" => AttemptOutcome::Failed,
            // Held back by its breaker or its order before it ran: as a hand-back, it does
            // not count.
            "released" | "breaker_wait" | "order_wait" => AttemptOutcome::Released,
            "cancelled" => AttemptOutcome::Cancelled,
            _ => continue,
        };
        if let Some(a) = attempts.iter_mut().rev().find(|a| a.attempt == n && a.outcome.is_none()) {
            a.finished_at = Some(e.at);
            a.outcome = Some(outcome);
            a.error = e.data.get("error").and_then(|v| serde_json::from_value::<JobError>(v.clone()).ok());
        }
    }
    attempts
}
