//! Leases: what keeps this process's claims alive, and what ends those of dead workers.
//!
//! Claimed jobs are leased for `lease_ms`. [`heartbeat`] renews every lease this process
//! holds every `heartbeat_ms`, in one statement and independently of the jobs' work, so a
//! busy job never looks dead; the lease is several heartbeats long. A job the heartbeat no
//! longer finds under this worker (cancelled, or taken over after a pause) is stopped
//! locally, and [`stop_cancelled`] stops one the store reports cancelled elsewhere at
//! once; either attempt's result would be refused by the store's fence anyway.
//!
//! [`reap`] fails the attempts of jobs whose lease expired (their worker died) with
//! `worker_lost`, retried or dead by the usual rule. Reaping goes through the same fenced
//! transition, so several reapers may race without double-reaping.

use super::{Inner, attempt};
use ferry_core::{ErrorType, JobError, JobId};
use ferry_store::{Finish, WorkerInfo, WorkerQueue};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Registers this worker, then renews its leases every `heartbeat_ms` and stops the
/// attempts whose jobs are no longer its own; unregisters when the engine stops.
pub(super) async fn heartbeat(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.heartbeat_ms);
    let info = WorkerInfo {
        id: inner.worker_id.clone(),
        node: inner.cfg.node.clone(),
        queues: inner
            .cfg
            .queues
            .iter()
            .map(|q| WorkerQueue { name: q.name.clone(), concurrency: q.concurrency })
            .collect(),
        started_at: 0,
        last_heartbeat: 0,
        running: 0,
    };
    let mut registered = false;
    loop {
        if !registered {
            match inner.store.register_worker(info.clone()).await {
                Ok(()) => registered = true,
                Err(e) => tracing::warn!(error = %e, "cannot register this worker; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(super::spread(every)) => {}
            _ = inner.stop_background.cancelled() => {
                let _ = inner.store.unregister_worker(&inner.worker_id).await;
                return;
            }
        }
        // Jobs registered before the heartbeat is sent were claimed in a transaction that
        // committed before it, so the heartbeat sees them if they are still ours. Only
        // those attempts are stopped when it does not: a job whose attempt ended while the
        // heartbeat was under way, and was claimed here again at once (a retry with a
        // short backoff), is not ours at the heartbeat's instant, but its new attempt is.
        let before = inner.running.attempts();
        let ids: Vec<JobId> = before.iter().map(|(id, _)| *id).collect();
        match inner.store.heartbeat(&inner.worker_id, inner.cfg.lease_ms, &ids).await {
            Ok(held) => {
                let held: HashSet<JobId> = held.into_iter().collect();
                for (id, attempt) in before.iter().filter(|(id, _)| !held.contains(id)) {
                    if inner.running.cancel_attempt(*id, *attempt) {
                        tracing::info!(job = %id, "no longer ours (cancelled or taken over); stopping the attempt");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Stops local attempts of jobs cancelled through another process, as the store reports
/// them (the heartbeat would also notice, but only at its next beat).
pub(super) async fn stop_cancelled(inner: Arc<Inner>, mut ids: tokio::sync::broadcast::Receiver<JobId>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let id = tokio::select! {
            r = ids.recv() => match r {
                Ok(id) => id,
                // Missed some: the heartbeat catches those.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = inner.stop_background.cancelled() => return,
        };
        if inner.running.cancel(id) {
            tracing::info!(job = %id, "cancelled elsewhere; stopping the attempt");
        }
    }
}

/// Fails the attempts whose lease expired, every `reap_ms`, in batches of 256.
pub(super) async fn reap(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.reap_ms);
    loop {
        loop {
            let expired = match inner.store.expired(256).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "reaper cannot read expired leases");
                    break;
                }
            };
            let n = expired.len();
            for job in expired {
                let who = job.worker.clone().unwrap_or_default();
                let error = JobError::new(ErrorType::WorkerLost, format!("worker {who} stopped heartbeating"));
                let result = attempt::decide(&inner, &job, error, None, None);
                let failure = attempt::failure_of(&result);
                let fin = Finish { id: job.id, attempt: job.attempt, queue: job.queue.clone(), result };
                if let Ok(true) = inner.store.finish(fin).await {
                    attempt::count_failure(failure);
                    if let Some(run) = job.run_id {
                        let _ = inner.advancer.send(run);
                    }
                    tracing::warn!(job = %job.id, worker = %who, "lease expired; attempt failed with worker_lost");
                    metrics::counter!("ferry_leases_expired_total", "queue" => job.queue.clone()).increment(1);
                }
            }
            if n < 256 {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(super::spread(every)) => {}
            _ = inner.stop_background.cancelled() => return,
        }
    }
}
