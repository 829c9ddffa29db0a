//! Pruning: deletes finished jobs past their retention. It runs on every node, workers or
//! not, so it takes the store alone rather than the engine.

use ferry_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
            _ = tokio::time::sleep(super::spread(Duration::from_millis(every_ms))) => {}
            _ = stop.cancelled() => return,
        }
    }
}
