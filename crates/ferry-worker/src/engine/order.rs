//! Ordered jobs (`JobSpec::ordering_key`): the jobs of a workspace under one key run one
//! at a time, in the order they were submitted, whatever their priority.
//!
//! The claim does not know about keys: a claimed job asks the store, before its executor
//! runs, whether an unfinished job of its key was submitted before it ([`ahead`]). If one
//! was, the attempt is held back without counting, as a breaker holds one back: the job
//! goes back to `scheduled` with an `order_wait` event naming the job right before it.
//! When a job of the key ends, the process that recorded the end lets the key's next job
//! go at once ([`released`]; a cancel does the same in the store). The deferral's own time
//! is a safety net for an end nobody followed with a release (a process that died between
//! the two, a job the reaper killed): [`NEXT_RECHECK`] for the job right behind the head,
//! [`DEEP_RECHECK`] for the rest, so a long line of waiting jobs is not claimed over and
//! over. A held-back job that finds, once its deferral is recorded, that it is the head
//! after all (its predecessor ended in between) lets itself go, so that no end is missed.
//!
//! A store error while asking holds the job back for [`ERROR_RECHECK`] rather than risk
//! running it out of order.

use super::Inner;
use ferry_core::JobId;
use ferry_core::time::{self, Micros};
use ferry_store::ClaimedJob;

/// How long the job right behind its key's head waits before it asks again, unless the
/// head's end lets it go first.
const NEXT_RECHECK: Micros = 10_000_000;
/// How long a job further back waits before it asks again.
const DEEP_RECHECK: Micros = 60_000_000;
/// How long a job waits when the store could not say what is ahead of it.
const ERROR_RECHECK: Micros = 1_000_000;

/// A job held back by its order: the job right before it, and how long it waits at most.
pub(super) struct Behind {
    pub after: Option<JobId>,
    pub wait: Micros,
}

/// Whether `job` must wait for earlier jobs of its key `key`.
pub(super) async fn ahead(inner: &Inner, job: &ClaimedJob, key: &str) -> Option<Behind> {
    let (after, wait) = match inner.store.order_ahead(&job.workspace, key, job.id).await {
        Ok(None) => return None,
        Ok(Some(ahead)) => (Some(ahead.nearest), if ahead.nearest == ahead.head { NEXT_RECHECK } else { DEEP_RECHECK }),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not read the jobs ahead of an ordered job; it waits");
            (None, ERROR_RECHECK)
        }
    };
    // The retry budget's clock runs while it waits: it is claimed again by the budget's end
    // at the latest, and then dies with `budget_exhausted` without running.
    let left = job.deadline_at.map(|d| (d - time::now_micros()).max(0)).unwrap_or(Micros::MAX);
    Some(Behind { after, wait: wait.min(left) })
}

/// After a job of key `key` ended (`ended`) or was held back by its order (`!ended`) and
/// that was recorded: lets the key's next job go. A held-back job lets itself go only if
/// nothing is ahead of it any more.
pub(super) async fn released(inner: &Inner, job: &ClaimedJob, key: &str, ended: bool) {
    if !ended {
        match inner.store.order_ahead(&job.workspace, key, job.id).await {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not read the jobs ahead of an ordered job");
                return;
            }
        }
    }
    if let Err(e) = inner.store.order_release(&job.workspace, key).await {
        tracing::warn!(job = %job.id, error = %e, "could not let the next ordered job go; it starts at its recheck");
    }
}
