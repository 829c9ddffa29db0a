//! Queue counts, read through a cache that keeps them cheap at any depth.
//!
//! `GET /v1/queues` and `/metrics` count each queue's jobs by state. The counts come from
//! the partial indexes, so they cost time in proportion to the jobs counted: a fraction of
//! a millisecond for a small queue, tens of milliseconds with a million jobs waiting. A
//! dashboard polling every 10 ms would then spend a fifth of the database's time counting.
//!
//! The rule: a count that took less than [`COSTLY`], or that found fewer than
//! [`MANY_JOBS`] jobs, is taken afresh on every request, so a small queue's counts are
//! always exact and current (however slow a loaded machine made one count). A count that
//! was both costly and large is reused for
//! [`SHARE`] times as long as it took (at most [`MAX_AGE`]), so counting never takes more
//! than about 1/[`SHARE`] of one connection's time however often it is asked for; once that
//! time is up, the next request still answers at once with the old counts and one count
//! runs in the background for the requests after it (never two at once per scope). Each
//! answer says how old its counts are (`counts_age_ms`). A request that must have current
//! counts (a benchmark timing a drain, a script) sends `Cache-Control: no-cache` and
//! counts afresh, paying the count's cost itself; its counts serve the others after it.

use ferry_store::QueueStats;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A count quicker than this is not kept: the next request counts again.
pub const COSTLY: Duration = Duration::from_millis(2);
/// Nor is a count of fewer jobs than this (every state of every queue of the scope).
pub const MANY_JOBS: u64 = 10_000;
/// A costly count is reused for this many times its own duration.
pub const SHARE: u32 = 20;
/// The longest a count is reused, however long it took.
pub const MAX_AGE: Duration = Duration::from_secs(5);
/// Scopes (a workspace, or server-wide) kept at most; past it the cache starts again.
const MAX_SCOPES: usize = 10_000;

/// Counts as answered: the queues' counts and how long ago they were taken.
#[derive(Debug, Clone)]
pub struct Counted {
    pub stats: Arc<Vec<QueueStats>>,
    pub age: Duration,
}

#[derive(Debug)]
struct Entry {
    stats: Arc<Vec<QueueStats>>,
    at: Instant,
    /// How long these counts may be reused (zero: count again at the next request).
    reusable: Duration,
    refreshing: bool,
}

/// How long counts that took `took` may be reused: zero unless they were costly and many.
fn reusable_for(took: Duration, stats: &[QueueStats]) -> Duration {
    let jobs: u64 = stats.iter().map(|s| s.queued + s.running + s.scheduled + s.retrying + s.dead).sum();
    if took < COSTLY || jobs < MANY_JOBS { Duration::ZERO } else { (took * SHARE).min(MAX_AGE) }
}

/// The counts of each scope (`None`: server-wide; `Some(workspace)`), read through.
#[derive(Debug, Default)]
pub struct QueueCounts {
    entries: Mutex<HashMap<Option<String>, Entry>>,
}

impl QueueCounts {
    /// The counts of `scope`: reused, or taken by `count` (at once, or in the background
    /// while stale ones answer; see the module's rule); `fresh`: taken now, whatever is kept.
    pub async fn get<F, Fut, E>(self: &Arc<Self>, scope: Option<String>, fresh: bool, count: F) -> Result<Counted, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<QueueStats>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if !fresh && let Some((answer, refresh)) = self.reuse(&scope) {
            if refresh {
                self.refresh_behind(scope, count());
            }
            return Ok(answer);
        }
        let started = Instant::now();
        let stats = count().await?;
        Ok(Counted { stats: self.keep(scope, stats, started), age: Duration::ZERO })
    }

    /// The kept counts of `scope` if they may still answer, and whether this request is
    /// the one to refresh them (marked, so that no other starts a count meanwhile).
    fn reuse(&self, scope: &Option<String>) -> Option<(Counted, bool)> {
        let mut entries = self.lock();
        let e = entries.get_mut(scope).filter(|e| !e.reusable.is_zero())?;
        let age = e.at.elapsed();
        let refresh = age >= e.reusable && !e.refreshing;
        e.refreshing |= refresh;
        Some((Counted { stats: e.stats.clone(), age }, refresh))
    }

    /// Counts `scope` again in the background; a failure clears the mark, so the next
    /// request tries again.
    fn refresh_behind<Fut, E>(self: &Arc<Self>, scope: Option<String>, count: Fut)
    where
        Fut: Future<Output = Result<Vec<QueueStats>, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match count.await {
                Ok(stats) => {
                    this.keep(scope, stats, started);
                }
                Err(err) => {
                    tracing::warn!(%err, "counting the queues failed; the next request counts again");
                    if let Some(e) = this.lock().get_mut(&scope) {
                        e.refreshing = false;
                    }
                }
            }
        });
    }

    fn keep(&self, scope: Option<String>, stats: Vec<QueueStats>, started: Instant) -> Arc<Vec<QueueStats>> {
        let stats = Arc::new(stats);
        let mut entries = self.lock();
        if entries.len() >= MAX_SCOPES && !entries.contains_key(&scope) {
            entries.clear();
        }
        let reusable = reusable_for(started.elapsed(), &stats);
        let entry = Entry { stats: stats.clone(), at: started, reusable, refreshing: false };
        entries.insert(scope, entry);
        stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<String>, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A count source that takes `took` (on tokio's paused clock) and answers with how
    /// many times it has counted, as the `dead` figure of queue `q` (beside `MANY_JOBS`
    /// queued jobs, so that the counts are large enough to keep).
    fn source(calls: &Arc<AtomicU64>, took: Duration) -> impl Future<Output = Result<Vec<QueueStats>, String>> + use<> {
        let calls = calls.clone();
        async move {
            tokio::time::sleep(took).await;
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(vec![QueueStats { queue: "q".into(), queued: MANY_JOBS, dead: n, ..Default::default() }])
        }
    }

    async fn counted(counts: &Arc<QueueCounts>, calls: &Arc<AtomicU64>, took: Duration) -> (u64, Duration) {
        let c = counts.get(None, false, || source(calls, took)).await.unwrap();
        (c.stats[0].dead, c.age)
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_quicker_than_costly_is_taken_on_every_request() {
        let (counts, calls) = (Arc::new(QueueCounts::default()), Arc::new(AtomicU64::new(0)));
        // Tokio's timer counts whole milliseconds; the exact edge is checked below.
        let just_under = COSTLY - Duration::from_millis(1);
        assert_eq!(counted(&counts, &calls, just_under).await, (1, Duration::ZERO));
        assert_eq!(counted(&counts, &calls, just_under).await, (2, Duration::ZERO));
        assert_eq!(counted(&counts, &calls, just_under).await, (3, Duration::ZERO));
    }

    #[test]
    fn costly_and_many_jobs_are_the_edges_of_reuse() {
        let reusable = |took, jobs: u64| {
            let (queued, running) = (jobs / 2, jobs - jobs / 2);
            let stats = vec![QueueStats { queue: "q".into(), queued, running, ..Default::default() }];
            reusable_for(took, &stats)
        };
        assert_eq!(reusable(COSTLY - Duration::from_nanos(1), MANY_JOBS), Duration::ZERO);
        assert_eq!(reusable(COSTLY, MANY_JOBS - 1), Duration::ZERO, "a slow count of few jobs");
        assert_eq!(reusable(COSTLY, MANY_JOBS), COSTLY * SHARE);
        assert_eq!(reusable(MAX_AGE / SHARE + Duration::from_nanos(1), MANY_JOBS), MAX_AGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_costly_count_is_reused_for_share_times_its_duration_then_refreshed_behind_the_answer() {
        let (counts, calls) = (Arc::new(QueueCounts::default()), Arc::new(AtomicU64::new(0)));
        let took = COSTLY;
        assert_eq!(counted(&counts, &calls, took).await.0, 1);
        let window = took * SHARE;
        tokio::time::advance(window - took - Duration::from_micros(1)).await;
        let (n, age) = counted(&counts, &calls, took).await;
        assert_eq!(n, 1, "still within its window: reused");
        assert_eq!(age, window - Duration::from_micros(1));
        tokio::time::advance(Duration::from_micros(1)).await;
        // At the window's end the stale counts answer at once, and one count starts.
        assert_eq!(counted(&counts, &calls, took).await.0, 1);
        assert_eq!(counted(&counts, &calls, took).await.0, 1, "a second request does not start another count");
        tokio::time::sleep(took).await;
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one background count ran");
        let (n, age) = counted(&counts, &calls, took).await;
        assert_eq!((n, age), (2, took), "the refreshed counts answer from then on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_very_slow_count_is_reused_no_longer_than_max_age() {
        let (counts, calls) = (Arc::new(QueueCounts::default()), Arc::new(AtomicU64::new(0)));
        let took = MAX_AGE / 10; // SHARE times this is past MAX_AGE
        counted(&counts, &calls, took).await;
        tokio::time::advance(MAX_AGE - took - Duration::from_micros(1)).await;
        assert_eq!(counted(&counts, &calls, took).await, (1, MAX_AGE - Duration::from_micros(1)));
        tokio::time::advance(Duration::from_micros(1)).await;
        counted(&counts, &calls, took).await;
        tokio::time::sleep(took).await;
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "counted again once MAX_AGE had passed");
    }

    #[tokio::test(start_paused = true)]
    async fn scopes_are_counted_apart_and_a_failed_refresh_is_retried() {
        let counts = Arc::new(QueueCounts::default());
        let calls = Arc::new(AtomicU64::new(0));
        let took = COSTLY * 2;
        counted(&counts, &calls, took).await;
        let other = counts.get(Some("ws".into()), false, || source(&calls, took)).await.unwrap();
        assert_eq!(other.stats[0].dead, 2, "another scope does not share the server-wide counts");
        tokio::time::advance(took * SHARE).await;
        let failing = || async { Err::<Vec<QueueStats>, _>("the store is away".to_string()) };
        assert_eq!(counts.get(None, false, failing).await.unwrap().stats[0].dead, 1, "stale counts answer");
        tokio::task::yield_now().await;
        // The failed count cleared its mark, so the next request tries again.
        assert_eq!(counted(&counts, &calls, took).await.0, 1);
        tokio::time::sleep(took).await;
        tokio::task::yield_now().await;
        assert_eq!(counted(&counts, &calls, took).await.0, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_request_counts_now_and_its_counts_serve_the_next() {
        let (counts, calls) = (Arc::new(QueueCounts::default()), Arc::new(AtomicU64::new(0)));
        let took = COSTLY * 2;
        assert_eq!(counted(&counts, &calls, took).await.0, 1);
        let fresh = counts.get(None, true, || source(&calls, took)).await.unwrap();
        assert_eq!((fresh.stats[0].dead, fresh.age), (2, Duration::ZERO), "counted within the reuse window");
        assert_eq!(counted(&counts, &calls, took).await, (2, took), "the fresh counts are kept");
    }
}
