//! The engine's background work beside dispatch: the heartbeat that renews this
//! process's leases, stopping attempts cancelled elsewhere, the reaper of expired leases,
//! the run advancer, and pruning.

use super::*;

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
            _ = tokio::time::sleep(every) => {}
            _ = inner.stop_background.cancelled() => {
                let _ = inner.store.unregister_worker(&inner.worker_id).await;
                return;
            }
        }
        // Jobs registered before the heartbeat is sent were claimed in a transaction that
        // committed before it, so the heartbeat sees them if they are still ours.
        let before: HashSet<JobId> = inner.running.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        let ids: Vec<JobId> = before.iter().copied().collect();
        match inner.store.heartbeat(&inner.worker_id, inner.cfg.lease_ms, &ids).await {
            Ok(held) => {
                let held: HashSet<JobId> = held.into_iter().collect();
                let running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                for id in before.difference(&held) {
                    if let Some(r) = running.get(id) {
                        tracing::info!(job = %id, "no longer ours (cancelled or taken over); stopping the attempt");
                        r.cancel();
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
        if let Some(r) = inner.running.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            tracing::info!(job = %id, "cancelled elsewhere; stopping the attempt");
            r.cancel();
        }
    }
}

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
                let fin = Finish {
                    id: job.id,
                    attempt: job.attempt,
                    queue: job.queue.clone(),
                    result: decide(&job, error, None, None),
                };
                if let Ok(true) = inner.store.finish(fin).await {
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
            _ = tokio::time::sleep(every) => {}
            _ = inner.stop_background.cancelled() => return,
        }
    }
}

/// Advances the runs whose node jobs started or ended, batching whatever arrived
/// together into one store call (one advance per run however many of its jobs moved).
/// Every `sweep_ms` it also advances runs nobody did: past their deadline, or idle for
/// `sweep_idle_ms` (a process died between a job's end and its run's advance).
pub(super) async fn advance_runs(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<RunId>) {
    let sweep = Duration::from_millis(inner.cfg.sweep_ms);
    let mut next_sweep = Instant::now() + sweep;
    loop {
        let mut freed = false;
        let first = tokio::select! {
            got = rx.recv() => got,
            _ = tokio::time::sleep_until(next_sweep.into()) => None,
            _ = inner.freed.notified() => {
                freed = true;
                None
            }
            _ = inner.stop_background.cancelled() => return,
        };
        let mut runs: HashSet<RunId> = HashSet::new();
        if let Some(run) = first {
            runs.insert(run);
            while let Ok(run) = rx.try_recv() {
                runs.insert(run);
            }
        }
        let sweeping = Instant::now() >= next_sweep;
        if sweeping {
            next_sweep = Instant::now() + sweep;
            match inner.store.runs_to_sweep(inner.cfg.sweep_idle_ms, 100).await {
                Ok(ids) => runs.extend(ids),
                Err(e) => tracing::warn!(error = %e, "cannot list runs to sweep"),
            }
        }
        if freed || sweeping {
            // Held jobs whose slot is free now go to their queues.
            if let Err(e) = inner.store.release_held_jobs(inner.cfg.default_limits.clone()).await {
                tracing::warn!(error = %e, "cannot release held jobs; the sweep will retry");
            }
        }
        if runs.is_empty() && !sweeping {
            continue;
        }
        let mut result = inner.store.advance_runs(runs.into_iter().collect(), inner.planner.clone()).await;
        // A run that ended frees a slot: start runs waiting for one (and on every sweep).
        if sweeping || result.as_ref().is_ok_and(|a| !a.finished.is_empty()) {
            let released =
                inner.store.release_queued_runs(inner.cfg.default_limits.clone(), inner.planner.clone()).await;
            match (&mut result, released) {
                (Ok(a), Ok(b)) => a.merge(b),
                (_, Err(e)) => tracing::warn!(error = %e, "cannot start queued runs; the sweep will retry"),
                _ => {}
            }
        }
        match result {
            Ok(advanced) => {
                let running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                for id in &advanced.stopped {
                    if let Some(token) = running.get(id) {
                        token.cancel();
                    }
                }
                for (run, state) in &advanced.finished {
                    tracing::debug!(%run, state = state.as_str(), "run finished");
                    metrics::counter!("ferry_runs_finished_total", "state" => state.as_str()).increment(1);
                }
            }
            // The sweep picks the runs up again once they have been idle for a while.
            Err(e) => tracing::warn!(error = %e, "cannot advance runs; the sweep will retry"),
        }
    }
}

/// Deletes finished jobs older than `retention_ms` every `every_ms`, in batches of
/// `batch` so that no transaction holds the queue up, until `stop` is cancelled. Every
/// node may run it: the store makes concurrent prunes skip each other's rows.
pub async fn prune_loop(
    store: Arc<dyn Store>,
    retention_ms: u64,
    every_ms: u64,
    batch: usize,
    stop: CancellationToken,
) {
    loop {
        let mut total = 0;
        loop {
            match store.prune(retention_ms, batch).await {
                Ok(n) => {
                    total += n;
                    if n < batch || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed; will retry");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(jobs = total, "pruned finished jobs past retention");
            metrics::counter!("ferry_jobs_pruned_total").increment(total as u64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(every_ms)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
