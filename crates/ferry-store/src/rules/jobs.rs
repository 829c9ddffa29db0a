//! The job rules: cancel, replay and delete one job, and release held jobs that fit
//! their workspace's limits again. See [`super`] for how rules are shared, and
//! [`crate::transition`] for the events each move writes.
//!
//! Every rule runs in one transaction of the caller's. [`JobTx::lock_job`] is
//! `SELECT … FOR UPDATE` on PostgreSQL and a plain read on SQLite, whose one writer
//! already holds everything; the move's statement then needs no state check of its own.

use super::{Turn, Turns};
use crate::{CancelOutcome, DeleteOutcome, ReplayOutcome, StoreError, WorkspaceLimits, transition};
use async_trait::async_trait;
use ferry_core::time::Micros;
use ferry_core::{JobError, JobId, JobState};
use serde_json::Value;

/// A job as a rule finds it, locked until the commit.
pub(crate) struct LockedJob {
    pub state: JobState,
    pub attempt: u32,
    pub queue: String,
    pub kind: String,
    pub workspace: String,
    pub ordering_key: Option<String>,
}

/// A held job, as its release reads it.
pub(crate) struct HeldJob {
    pub id: JobId,
    pub user: String,
    pub queue: String,
    pub run_at: Micros,
}

/// The statements the job rules need, one backend's implementation each, all in one
/// transaction. A backend notes what they touched for after its commit: the jobs whose
/// logs were written (event streams) and the queues that got ready work (dispatchers).
#[async_trait]
pub(crate) trait JobTx: Send {
    /// The transaction's clock. PostgreSQL reads it again after each lock
    /// ([`JobTx::lock_job`], [`JobTx::jobs_in_flight`]), so that it is never before
    /// whatever moved the job last.
    fn now(&self) -> Micros;
    /// Locks a job for the rest of the transaction and reads it; only a job of
    /// `workspace` when one is given.
    async fn lock_job(&mut self, id: JobId, workspace: Option<&str>) -> Result<Option<LockedJob>, StoreError>;
    /// Writes the cancelled state with `error`; a `running` job's attempt is told to stop
    /// once this commits (PostgreSQL: on the cancel channel, to whichever process runs it).
    async fn set_cancelled(&mut self, id: JobId, was: JobState, error: &JobError) -> Result<(), StoreError>;
    /// Queues a dead or cancelled job again as a fresh start: the attempts so far no
    /// longer count, the total timeout starts again. Returns its queue.
    async fn requeue(&mut self, id: JobId) -> Result<String, StoreError>;
    /// Deletes the job and its log.
    async fn delete_job(&mut self, id: JobId) -> Result<(), StoreError>;
    /// Appends to jobs' logs, in this order, at [`JobTx::now`].
    async fn log(&mut self, events: Vec<(JobId, &'static str, Value)>) -> Result<(), StoreError>;
    /// Notes that `queue` got ready work: its dispatchers look again after the commit.
    async fn wake(&mut self, queue: String) -> Result<(), StoreError>;
    /// The workspace's own limits, if it set any.
    async fn workspace_limits(&mut self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError>;
    /// `(the user's, the workspace's)` unfinished standalone jobs; on PostgreSQL under the
    /// workspace's admission lock, so that a release and a submission never both take
    /// the last slot.
    async fn jobs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError>;
    /// The workspace's held jobs, oldest first (at most 1,000 a pass).
    async fn held_jobs(&mut self, workspace: &str) -> Result<Vec<HeldJob>, StoreError>;
    /// Moves a held job to `state` due at `at`; `false` when it was no longer held.
    async fn unhold(&mut self, id: JobId, state: JobState, at: Micros) -> Result<bool, StoreError>;
    /// Makes the head of `workspace`'s ordering key `key` ready now if an attempt held
    /// back left it waiting; returns it and its queue.
    async fn order_go(&mut self, workspace: &str, key: &str) -> Result<Option<(JobId, String)>, StoreError>;
}

/// Cancels a job of `workspace` that has not ended.
pub(crate) async fn cancel(tx: &mut impl JobTx, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
    let Some(job) = tx.lock_job(id, Some(workspace)).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.state.is_final() {
        return Ok(CancelOutcome::AlreadyFinal(job.state));
    }
    cancel_locked(tx, id, &job).await?;
    Ok(CancelOutcome::Cancelled { was_running: job.state == JobState::Running, queue: job.queue, kind: job.kind })
}

/// Cancels a job of a run that has not ended (the run's own rules found it); returns
/// whether an attempt of it was running.
pub(crate) async fn cancel_node_job(tx: &mut impl JobTx, id: JobId) -> Result<bool, StoreError> {
    match tx.lock_job(id, None).await? {
        Some(job) if !job.state.is_final() => {
            cancel_locked(tx, id, &job).await?;
            Ok(job.state == JobState::Running)
        }
        _ => Ok(false),
    }
}

async fn cancel_locked(tx: &mut impl JobTx, id: JobId, job: &LockedJob) -> Result<(), StoreError> {
    let error = transition::cancel_error();
    tx.set_cancelled(id, job.state, &error).await?;
    let (event, data) = transition::cancel_event(job.state, job.attempt, &error);
    tx.log(vec![(id, event, data)]).await?;
    // The next job of its key may start.
    if let Some(key) = &job.ordering_key {
        order_release(tx, &job.workspace, key).await?;
    }
    Ok(())
}

/// Lets the next job of `workspace`'s ordering key `key` go: its head, if an attempt held
/// back left it waiting (`FinishResult::Deferred` with `Wait::Order`), is ready now.
/// Called after a job of the key ends (a worker's finish, a cancel), and by a held-back
/// job that finds itself the head once its deferral is recorded, so that a wait decided
/// just before its predecessor's end is not missed.
pub(crate) async fn order_release(
    tx: &mut impl JobTx,
    workspace: &str,
    key: &str,
) -> Result<Option<JobId>, StoreError> {
    let Some((id, queue)) = tx.order_go(workspace, key).await? else { return Ok(None) };
    tx.wake(queue).await?;
    Ok(Some(id))
}

/// Runs a dead or cancelled job of `workspace` again.
pub(crate) async fn replay(tx: &mut impl JobTx, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
    let Some(job) = tx.lock_job(id, Some(workspace)).await? else {
        return Ok(ReplayOutcome::NotFound);
    };
    if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
        return Ok(ReplayOutcome::NotReplayable(job.state));
    }
    let queue = tx.requeue(id).await?;
    let events = transition::replay_events(job.state, &queue).map(|(kind, data)| (id, kind, data));
    tx.log(events.into()).await?;
    tx.wake(queue).await?;
    Ok(ReplayOutcome::Replayed)
}

/// Deletes an ended job of `workspace` with its log.
pub(crate) async fn delete(tx: &mut impl JobTx, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
    let Some(job) = tx.lock_job(id, Some(workspace)).await? else {
        return Ok(DeleteOutcome::NotFound);
    };
    if !job.state.is_final() {
        return Ok(DeleteOutcome::NotFinished(job.state));
    }
    tx.delete_job(id).await?;
    Ok(DeleteOutcome::Deleted)
}

/// Queues the workspace's held jobs that fit its limits now (`defaults` when it set
/// none), oldest first, in [`Turns`]; returns how many.
pub(crate) async fn release_held(
    tx: &mut impl JobTx,
    workspace: &str,
    defaults: &WorkspaceLimits,
) -> Result<usize, StoreError> {
    let limits = tx.workspace_limits(workspace).await?.unwrap_or_else(|| defaults.clone());
    let mut turns = Turns::default();
    let mut events = Vec::new();
    for held in tx.held_jobs(workspace).await? {
        if turns.refused(&held.user) {
            continue;
        }
        let (user_now, workspace_now) = tx.jobs_in_flight(workspace, &held.user).await?;
        match turns.turn(&held.user, limits.jobs_for(&held.user).check("job", user_now, workspace_now, 1)) {
            Turn::Stop => break,
            Turn::Skip => continue,
            Turn::Go => {}
        }
        let now = tx.now();
        let (state, at) = if held.run_at > now { (JobState::Scheduled, held.run_at) } else { (JobState::Queued, now) };
        // On PostgreSQL the list was read before the admission lock: another pass may
        // have released this job since.
        if !tx.unhold(held.id, state, at).await? {
            continue;
        }
        let (kind, data) = transition::submit_event(state, &held.queue, at);
        events.push((held.id, kind, data));
        tx.wake(held.queue).await?;
    }
    let released = events.len();
    tx.log(events).await?;
    Ok(released)
}
