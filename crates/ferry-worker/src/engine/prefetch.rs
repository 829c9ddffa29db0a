//! Prefetch: a dispatcher's jobs claimed ahead of its free slots.
//!
//! Without it, a queue with few slots is bound by round trips: each slot waits for a
//! claim after its job's end is committed. With it, the dispatcher keeps a small buffer
//! of jobs already leased to this worker (the same lease, the same fencing token, renewed
//! by the same heartbeat), starts the next one from the buffer the moment a slot frees,
//! and refills the buffer with a claim that runs while the attempts do.
//!
//! **How big.** The buffer holds what this process starts in two claim round trips at
//! its observed rate (`2 × rate × round trip`, rounded down, at most one claim batch): a
//! refill is asked for when it falls to half, and lands as the buffer runs dry, so a job
//! waits in a buffer about two round trips at most while another process could have run
//! it. The size does not depend on the concurrency: it is the work of a round trip. Jobs
//! that take longer than a round trip each (most real work) get a buffer of 0: the
//! dispatcher claims exactly its free slots, as without prefetch, and holds each slot
//! until the job's end is committed.
//!
//! **Remote kinds.** A queue of remote kinds (see [`crate::remote`]) buffers as many jobs
//! as it has slots, whatever its rate: its round trip is the remote worker's (a result
//! over HTTP, then a lease), which the rate cannot see from here, and a buffered job has
//! not started, so its timeout does not run while it waits. A worker's next batch is so
//! ready when its results come in.
//!
//! **In what order.** The buffer is kept in claim order (priority, then due time, then
//! id, see [`ClaimedJob::claim_order`]); a refill is merged into it, so a higher-priority
//! job claimed later starts before lower ones already buffered.
//!
//! **Handed back.** A buffered job is leased but has not started: on a pause, a drain or
//! a stop the dispatcher hands every one back (`released`: ready again at once, the
//! attempt does not count); after a crash its lease expires and the reaper retries it. A
//! buffered job cancelled or taken over meanwhile (its token cancelled by the listener or
//! the heartbeat) is dropped, not started.

use super::{Inner, finisher};
use ferry_store::{ClaimRequest, Claimed, ClaimedJob, StoreError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the rate is measured over before the estimate moves.
const RATE_WINDOW: Duration = Duration::from_millis(50);
/// The weight of the newest measurement in the moving averages.
const NEWEST: f64 = 0.3;
/// How many round trips of work the buffer holds: two, so that a refill asked for when
/// the buffer falls below its target lands before it runs dry.
const LEAD: f64 = 2.0;

/// One queue's buffer of prefetched jobs, with what sizes it.
pub(super) struct Prefetch {
    inner: Arc<Inner>,
    /// The queue's control: a queue of remote kinds buffers its slots' worth.
    control: Arc<super::queue_control::QueueControl>,
    buffer: VecDeque<(ClaimedJob, CancellationToken)>,
    /// The refill claim running while attempts do, if any.
    refill: Option<JoinHandle<Result<Claimed, StoreError>>>,
    /// Jobs started per second (moving average).
    rate: f64,
    /// A claim's round trip in seconds (moving average).
    round_trip: f64,
    window_started: Instant,
    started_in_window: usize,
}

impl Prefetch {
    pub(super) fn new(inner: Arc<Inner>, control: Arc<super::queue_control::QueueControl>) -> Self {
        Prefetch {
            inner,
            control,
            buffer: VecDeque::new(),
            refill: None,
            rate: 0.0,
            round_trip: 0.0,
            window_started: Instant::now(),
            started_in_window: 0,
        }
    }

    /// How many jobs the buffer should hold now (see the module docs).
    pub(super) fn target(&self) -> usize {
        // A fixed size (`EngineConfig::prefetch`), else the measured one, at most one
        // claim's worth (`EngineConfig::claim_batch`).
        let cfg = &self.inner.cfg;
        if let Some(slots) = self.control.remote_slots() {
            return slots.min(cfg.claim_batch);
        }
        cfg.prefetch.unwrap_or_else(|| ((LEAD * self.rate * self.round_trip).floor() as usize).min(cfg.claim_batch))
    }

    /// Takes up to `n` buffered jobs in claim order, skipping those cancelled or taken
    /// over while they waited.
    pub(super) fn take(&mut self, n: usize) -> Vec<ClaimedJob> {
        let mut out = Vec::with_capacity(n.min(self.buffer.len()));
        while out.len() < n {
            let Some((job, token)) = self.buffer.pop_front() else { break };
            if token.is_cancelled() {
                self.forget(&job);
                continue;
            }
            out.push(job);
        }
        out
    }

    /// Notes `n` jobs started now, for the rate.
    pub(super) fn started(&mut self, n: usize) {
        self.started_in_window += n;
        let elapsed = self.window_started.elapsed();
        if elapsed >= RATE_WINDOW {
            let measured = self.started_in_window as f64 / elapsed.as_secs_f64();
            self.rate = NEWEST * measured + (1.0 - NEWEST) * self.rate;
            self.window_started = Instant::now();
            self.started_in_window = 0;
        }
    }

    /// Notes a claim's round trip.
    pub(super) fn timed(&mut self, took: Duration) {
        let took = took.as_secs_f64();
        self.round_trip = match self.round_trip {
            0.0 => took,
            rt => NEWEST * took + (1.0 - NEWEST) * rt,
        };
    }

    /// The running refill's jobs, if any, once it returns, merged into the buffer.
    pub(super) async fn land_refill(&mut self) {
        let Some(refill) = self.refill.take() else { return };
        match refill.await {
            Ok(Ok(claimed)) => self.keep(claimed.jobs),
            Ok(Err(e)) => tracing::warn!(error = %e, "prefetch claim failed; claiming on demand"),
            Err(e) => tracing::warn!(error = %e, "prefetch claim task failed"),
        }
    }

    /// Merges a refill that has already returned, without waiting: its jobs then take
    /// their place in claim order before the next ones are taken.
    pub(super) async fn land_if_done(&mut self) {
        if self.refill.as_ref().is_some_and(|r| r.is_finished()) {
            self.land_refill().await;
        }
    }

    /// Starts a refill claim (`req`, for as many as the buffer lacks) if the buffer is
    /// below half its target and none runs; it runs while the attempts do.
    pub(super) fn maybe_refill(&mut self, req: ClaimRequest) {
        let want = self.target().saturating_sub(self.buffer.len());
        // Below half: asked earlier, refills would come in ones and twos, each a claim.
        if self.refill.is_some() || want == 0 || self.buffer.len() > self.target() / 2 {
            return;
        }
        let inner = self.inner.clone();
        let req = ClaimRequest { limit: want, ..req };
        self.refill = Some(tokio::spawn(async move { inner.store.claim(req).await }));
    }

    /// Puts leased jobs into the buffer, in claim order, each registered as this
    /// process's so that the heartbeat renews its lease and a cancel reaches it.
    pub(super) fn keep(&mut self, jobs: Vec<ClaimedJob>) {
        if jobs.is_empty() {
            return;
        }
        for job in jobs {
            let token = self.inner.running.register(job.id, job.attempt);
            self.buffer.push_back((job, token));
        }
        self.buffer.make_contiguous().sort_by(|a, b| ClaimedJob::claim_order(&a.0, &b.0));
    }

    /// Hands every buffered job back, and those of a refill still running.
    pub(super) async fn hand_back(&mut self) {
        self.land_refill().await;
        let jobs: Vec<ClaimedJob> = self.buffer.drain(..).map(|(job, _)| job).collect();
        for job in &jobs {
            finisher::release(&self.inner, job).await;
            self.forget(job);
        }
    }

    fn forget(&self, job: &ClaimedJob) {
        self.inner.running.remove(job.id, job.attempt);
    }

    /// How many jobs wait in the buffer.
    pub(super) fn len(&self) -> usize {
        self.buffer.len()
    }
}
