//! The run advancer: moves workflow runs on after their node jobs start or end.
//!
//! The engine sends the run of every node job it claims or finishes here;
//! [`advance_runs`] batches whatever arrived together into one `Store::advance_runs` and
//! stops local attempts of jobs the plan cancelled. Its sweep catches runs nobody
//! advanced, and it starts runs and jobs that wait for a free slot.

use super::Inner;
use ferry_core::run::RunId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
                for id in &advanced.stopped {
                    inner.running.cancel(*id);
                }
                let tokens: u64 = advanced.tokens.iter().map(|(_, n)| n).sum();
                if tokens > 0 {
                    metrics::counter!("ferry_agent_tokens_total").increment(tokens);
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
