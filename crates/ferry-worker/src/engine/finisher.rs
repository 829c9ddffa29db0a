//! The finisher: records attempts' ends in the store.
//!
//! Every end goes through one fenced transition (`Store::finish_many`), applied only if
//! the job is still `running` under the attempt number the worker was given; a refused
//! end means the job moved on without this attempt (cancelled, or its lease taken over).
//! Attempts that end at about the same time share one store call.

use super::Inner;
use ferry_store::{ClaimedJob, Finish, FinishResult};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Records an attempt's end through the finisher. Returns whether the store accepted it.
pub(super) async fn finish(inner: &Inner, fin: Finish) -> bool {
    let (tx, rx) = oneshot::channel();
    if inner.finisher.send((fin, tx)).is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// Gathers the ends of attempts that finished at about the same time into one store call,
/// so that a busy queue costs the store one request per batch rather than one per job.
/// Store outages are retried for up to one lease: past that the reaper owns the jobs.
pub(super) async fn finish_batches(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<(Finish, oneshot::Sender<bool>)>,
) {
    let mut batch = Vec::with_capacity(256);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = inner.stop_background.cancelled() => return,
        };
        batch.push(first);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let fins: Vec<Finish> = batch.iter().map(|(f, _)| f.clone()).collect();
        let give_up = Instant::now() + Duration::from_millis(inner.cfg.lease_ms);
        let mut pause = Duration::from_millis(50);
        let applied = loop {
            match inner.store.finish_many(fins.clone()).await {
                Ok(applied) => break applied,
                Err(e) if Instant::now() < give_up => {
                    tracing::warn!(jobs = fins.len(), error = %e, "cannot record attempts' ends; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(jobs = fins.len(), error = %e, "giving up recording attempts' ends; the reaper will retry the jobs");
                    break vec![false; fins.len()];
                }
            }
        };
        for ((fin, reply), ok) in batch.drain(..).zip(applied) {
            if !ok {
                tracing::info!(job = %fin.id, attempt = fin.attempt, "result refused: the lease was taken over or the job cancelled");
            }
            let _ = reply.send(ok);
        }
    }
}

/// Hands a claimed job back unstarted (`released`: ready again, the attempt does not
/// count).
pub(super) async fn release(inner: &Inner, job: &ClaimedJob) {
    let fin = Finish { id: job.id, attempt: job.attempt, queue: job.queue.clone(), result: FinishResult::Released };
    finish(inner, fin).await;
}
