//! Pruning: deletes finished jobs past their retention, and blobs unused for as long. It runs on every node, workers or
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
        // Blobs go by the same retention, counted from their last use (see
        // `ferry_store::blobs`): a blob nobody put or read for that long goes.
        match ferry_store::Blobs::new(store.blobs(), Default::default()).prune(retention_ms, batch).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(blobs = n, "pruned blobs unused past retention");
                metrics::counter!("ferry_blobs_pruned_total").increment(n as u64);
            }
            Err(e) => tracing::warn!(error = %e, "pruning blobs failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(super::spread(Duration::from_millis(every_ms))) => {}
            _ = stop.cancelled() => return,
        }
    }
}
