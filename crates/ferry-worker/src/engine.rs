//! The engine: per-queue dispatchers, attempt tasks, heartbeats and the reaper.
//!
//! This module holds the engine's public types and wires its tasks together; each task
//! lives in a module of its own:
//!
//! - [`dispatch`]: one dispatcher per queue. It waits for a free slot, takes every free
//!   slot (up to the claim batch), takes that many jobs from its prefetch buffer or claims
//!   them in one store call, and starts a task per job, each holding its slot while its
//!   work runs (its end is recorded after the slot is given back). With
//!   nothing to claim it parks a claim in the store and sleeps until work arrives, the
//!   next scheduled job is due, or the poll interval passes (a safety net, never the main
//!   path). Its loop is an explicit state machine ([`dispatch::State`]).
//! - [`prefetch`]: the dispatcher's buffer of jobs leased ahead of its free slots, sized
//!   to one claim round trip of work at the queue's observed rate, so a slot that frees
//!   starts its next job at once while the refill claim runs; handed back on a pause, a
//!   drain or a stop.
//! - [`attempt`]: one attempt of one job: the executor (or the result cache) under the
//!   attempt's timeout, its cancel token and the drain's hard stop, and what its outcome
//!   becomes (success, retry or death, by [`ferry_core::decide_after_failure`]).
//! - [`order`]: holds back an ordered job (`ordering_key`) while an earlier job of its key
//!   is unfinished, and lets the key's next job go when one ends.
//! - [`finisher`]: records attempts' ends, gathering those that end together into one
//!   fenced store call.
//! - [`leases`]: the heartbeat that renews every lease this process holds (a busy job
//!   never looks dead) and stops attempts whose job is no longer ours, the listener that
//!   stops attempts cancelled elsewhere, and the reaper that fails attempts whose lease
//!   expired (their worker died) with `worker_lost`.
//! - [`advancer`]: advances the workflow runs whose node jobs started or ended, and sweeps
//!   for runs nobody advanced.
//! - [`queue_control`]: applies the queues' run-time settings (pause, concurrency) that
//!   operators and admins change in the store.
//! - [`pruning`]: deletes finished jobs past their retention.
//! - [`remote_queues`]: the queues of remote kinds, each with a dispatcher whose slots
//!   are those of the remote workers' sessions serving it here (see [`crate::remote`]),
//!   and the hub's upkeep (sessions that stopped calling end).
//!
//! **Shutdown.** [`Engine::shutdown`] stops claiming, lets running attempts finish within
//! the grace period, then stops the rest and hands them back (`released`: ready again,
//! the attempt does not count).

mod advancer;
mod attempt;
mod breakers;
mod claim_checks;
mod dispatch;
mod finisher;
mod leases;
mod order;
mod prefetch;
mod pruning;
mod queue_control;
mod remote_queues;

pub use pruning::prune_loop;

use crate::executor::Registry;
use ferry_core::JobId;
use ferry_core::run::RunId;
use ferry_store::{Finish, Planner, Store};
use queue_control::QueueControl;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A periodic task's next wait: its period, shortened by up to a fifth at random.
///
/// Every process starts its heartbeat, lease sweep, settings read, pruning and idle
/// safety-net claims at once, with round periods: unspread they fire together, tick after
/// tick (and with those of processes started with it), and a submission arriving then
/// waits behind all of them. Spread, they drift apart within a few periods. Only ever
/// shorter, so every "within `poll_ms`" (and the heartbeat's margin under the lease)
/// still holds.
pub(crate) fn spread(period: Duration) -> Duration {
    period.mul_f64(0.8 + 0.2 * fastrand::f64())
}

/// One queue served by this engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub name: String,
    /// Attempts of this queue running at once in this process.
    pub concurrency: usize,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this process in worker ids (`node:pid:random`).
    pub node: String,
    pub queues: Vec<QueueConfig>,
    /// Lease length; several heartbeats long.
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    /// Longest a dispatcher sleeps without a signal.
    pub poll_ms: u64,
    /// How often the reaper looks for expired leases.
    pub reap_ms: u64,
    /// Most jobs claimed in one store call.
    pub claim_batch: usize,
    /// Largest serialized output of one attempt kept inline (an output over
    /// `blobs.claim_check_bytes` is kept as a blob instead, up to `blobs.max_bytes`).
    pub max_output_bytes: usize,
    /// The blob store's limits: claim checks of inputs and outputs (`ferry_store::blobs`).
    pub blobs: ferry_store::BlobsConfig,
    /// Limits the jobs a workflow run creates are validated against.
    pub job_limits: ferry_core::Limits,
    /// How often runs that nobody advanced are looked for.
    pub sweep_ms: u64,
    /// A running run not advanced for this long is advanced by the sweep.
    pub sweep_idle_ms: u64,
    /// Concurrency limits of workspaces that set none, for starting queued runs.
    pub default_limits: ferry_store::WorkspaceLimits,
    /// A fixed size for every queue's prefetch buffer (see [`prefetch`]); `None`, the
    /// default: sized by each queue's observed rate, which is what a server runs with.
    pub prefetch: Option<usize>,
    /// The most attempts of this process whose slot went back before their end was
    /// recorded, on queues that prefetch; past it, slots wait for the finish again, so a
    /// store that falls behind slows claims. 0: no slot goes back early. The default,
    /// 10,000 (`UNRECORDED_MAX`), is what a server runs with.
    pub unrecorded_max: usize,
    /// The circuit breakers' settings (see [`breakers`]).
    pub breakers: ferry_core::breaker::BreakerConfig,
    /// Per queue, the least severity of a failure that kills a job there
    /// (`ferry_core::severity`); a queue not named has no floor.
    pub dead_severity: HashMap<String, ferry_core::Severity>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node: "ferry".into(),
            queues: vec![QueueConfig { name: "default".into(), concurrency: 10 }],
            lease_ms: 30_000,
            heartbeat_ms: 5_000,
            poll_ms: 1_000,
            reap_ms: 2_000,
            claim_batch: 256,
            prefetch: None,
            unrecorded_max: UNRECORDED_MAX,
            max_output_bytes: 1024 * 1024,
            blobs: ferry_store::BlobsConfig::default(),
            job_limits: ferry_core::Limits::default(),
            sweep_ms: 1_000,
            sweep_idle_ms: 10_000,
            default_limits: ferry_store::WorkspaceLimits::default(),
            breakers: ferry_core::breaker::BreakerConfig::default(),
            dead_severity: HashMap::new(),
        }
    }
}

/// What the engine's tasks share: the store, the settings, this process's attempts, and
/// the tokens and channels that tie the tasks together.
struct Inner {
    store: Arc<dyn Store>,
    /// The store's blobs: claim-checked inputs are read, large outputs kept, here.
    blobs: ferry_store::Blobs,
    registry: Registry,
    cfg: EngineConfig,
    worker_id: String,
    /// This process's attempts, each with the token that stops it (shared with `runs`).
    running: Arc<Running>,
    /// What attempts may do with workflow runs (see [`crate::Runs`]).
    runs: crate::Runs,
    /// Cancelled when the engine stops claiming.
    stop_claiming: CancellationToken,
    /// Cancelled when the grace period is over: running attempts are handed back.
    hard_stop: CancellationToken,
    /// Cancelled when heartbeats and the reaper must end.
    stop_background: CancellationToken,
    attempts: TaskTracker,
    /// The queues' dispatchers: a drain waits for them to hand over what they hold
    /// before it waits for the attempts.
    dispatchers: TaskTracker,
    background: TaskTracker,
    /// Attempts' ends, gathered by the finisher into batched store calls.
    finisher: mpsc::UnboundedSender<(Finish, oneshot::Sender<bool>)>,
    /// Node jobs that started or ended: their runs must advance.
    advancer: mpsc::UnboundedSender<RunId>,
    planner: Planner,
    /// Each configured queue's run-time controls (pause, concurrency).
    controls: HashMap<String, Arc<QueueControl>>,
    /// The controls of the queues of remote kinds served here (see [`remote_queues`]).
    remote_controls: Mutex<HashMap<String, Arc<QueueControl>>>,
    /// Notified when a standalone job ended: jobs held for a slot may go now.
    freed: tokio::sync::Notify,
    /// Attempts whose work is over but whose end is not recorded yet and whose slot went
    /// back early (`attempt::run_attempt`), at most `EngineConfig::unrecorded_max`.
    unrecorded: Arc<tokio::sync::Semaphore>,
    /// What this process keeps of the breakers its attempts go through (see `breakers`).
    breaker_book: breakers::Book,
}

/// The most attempts of this process whose slots went back before their ends were
/// recorded, by default ([`EngineConfig::unrecorded_max`]). Past it, slots again wait for
/// the finish, so when the store falls behind, claims cannot outrun it and pile up running
/// jobs in memory (found on PostgreSQL: with finishes slowed, 89,000 jobs were leased as
/// running and the server grew to 170 MiB). A healthy store leaves a few finish batches
/// waiting (up to 1,024 ends each, and a few thousand while a deep PostgreSQL queue
/// drains): a tighter bound halved that drain.
pub(crate) const UNRECORDED_MAX: usize = 10_000;

/// This process's attempts, running or prefetched, each under its attempt number (the
/// lease's fencing token) with the token that stops it. Keyed by job, but an entry is
/// only ever replaced or removed for its own attempt: a job retried at once may be
/// claimed again here before its last attempt's task is done.
#[derive(Default)]
struct Running(Mutex<HashMap<JobId, (u32, CancellationToken)>>);

impl Inner {
    fn remote_controls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<QueueControl>>> {
        self.remote_controls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, (u32, CancellationToken)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an attempt (again, when it was prefetched) and returns its stop token.
    fn register(&self, id: JobId, attempt: u32) -> CancellationToken {
        let mut map = self.lock();
        match map.get(&id) {
            Some((a, token)) if *a == attempt => token.clone(),
            _ => {
                let token = CancellationToken::new();
                map.insert(id, (attempt, token.clone()));
                token
            }
        }
    }

    /// Forgets an attempt, unless a later attempt of the job took its place.
    fn remove(&self, id: JobId, attempt: u32) {
        let mut map = self.lock();
        if map.get(&id).is_some_and(|(a, _)| *a == attempt) {
            map.remove(&id);
        }
    }

    /// Stops the job's attempt here, if any; whether there was one.
    fn cancel(&self, id: JobId) -> bool {
        match self.lock().get(&id) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops the attempt `attempt` of the job here, if it is the one running; whether it
    /// was. A later attempt of the job that took its place is left running.
    fn cancel_attempt(&self, id: JobId, attempt: u32) -> bool {
        match self.lock().get(&id) {
            Some((a, token)) if *a == attempt => {
                token.cancel();
                true
            }
            _ => false,
        }
    }

    /// Every attempt running here: the job and the attempt's number.
    fn attempts(&self) -> Vec<(JobId, u32)> {
        self.lock().iter().map(|(id, (attempt, _))| (*id, *attempt)).collect()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts dispatchers for every configured queue (a queue with concurrency 0 is not
    /// served), the heartbeat and the reaper.
    pub fn start(store: Arc<dyn Store>, registry: Registry, cfg: EngineConfig) -> Engine {
        let worker_id = format!("{}:{}:{:08x}", cfg.node, std::process::id(), fastrand::u32(..));
        let (finisher, finishes) = mpsc::unbounded_channel();
        let (advancer, advances) = mpsc::unbounded_channel();
        let planner = crate::planner(cfg.job_limits.clone(), registry.clone(), &cfg.default_limits);
        let running = Arc::new(Running::default());
        let stopper = running.clone();
        let runs = crate::Runs::new(store.clone(), planner.clone(), cfg.default_limits.clone(), move |id| {
            stopper.cancel(id);
        });
        // Taken before `cfg` moves into `Inner`; a semaphore holds at most `MAX_PERMITS`.
        let unrecorded_max = cfg.unrecorded_max.min(tokio::sync::Semaphore::MAX_PERMITS);
        let cfg_controls = cfg
            .queues
            .iter()
            .filter(|q| q.concurrency > 0)
            .map(|q| (q.name.clone(), Arc::new(QueueControl::new(q.concurrency))))
            .collect();
        let inner = Arc::new(Inner {
            blobs: ferry_store::Blobs::new(store.blobs(), cfg.blobs.clone()),
            store,
            registry,
            cfg,
            worker_id,
            running,
            runs,
            stop_claiming: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            stop_background: CancellationToken::new(),
            attempts: TaskTracker::new(),
            dispatchers: TaskTracker::new(),
            background: TaskTracker::new(),
            finisher,
            advancer,
            planner,
            controls: cfg_controls,
            remote_controls: Mutex::default(),
            freed: tokio::sync::Notify::new(),
            unrecorded: Arc::new(tokio::sync::Semaphore::new(unrecorded_max)),
            breaker_book: breakers::Book::default(),
        });
        inner.background.spawn(finisher::finish_batches(inner.clone(), finishes));
        inner.background.spawn(advancer::advance_runs(inner.clone(), advances));
        if let Some(cancellations) = inner.store.cancellations() {
            inner.background.spawn(leases::stop_cancelled(inner.clone(), cancellations));
        }
        for q in inner.cfg.queues.iter().filter(|q| q.concurrency > 0) {
            inner.dispatchers.spawn(dispatch::dispatch(inner.clone(), q.clone()));
        }
        inner.background.spawn(leases::heartbeat(inner.clone()));
        inner.background.spawn(queue_control::watch_queues(inner.clone()));
        inner.background.spawn(leases::reap(inner.clone()));
        // The worker protocol's sessions meet this engine's remote attempts in its hub.
        let (slots, slot_changes) = mpsc::unbounded_channel();
        let hub = remote_queues::hub(&inner.cfg, slots);
        if inner.registry.remote().attach(hub.clone()) {
            inner.background.spawn(remote_queues::serve(inner.clone(), slot_changes));
            inner.background.spawn(remote_queues::upkeep(inner.clone(), hub));
        }
        tracing::info!(worker = %inner.worker_id, queues = ?inner.cfg.queues, "engine started");
        Engine { inner }
    }

    /// This process's worker id, as recorded on attempts.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Stops a running attempt of this process at once (after the store cancelled it).
    /// Returns whether the job was running here.
    pub fn stop_attempt(&self, id: JobId) -> bool {
        self.inner.running.cancel(id)
    }

    /// Makes this process read the breaker `key` again at its next attempt, instead of
    /// taking it for closed a little longer (an operator changed it through this process).
    pub fn forget_breaker(&self, key: &str) {
        self.inner.breaker_book.forget(key);
    }

    /// Attempts running in this process.
    pub fn running(&self) -> usize {
        self.inner.running.len()
    }

    /// Drains: stops claiming, waits for the dispatchers to hand over what they hold
    /// (jobs a parked claim leased just before the stop start like any running attempt),
    /// waits up to `grace` for running attempts, hands back the rest, then stops
    /// heartbeats and the reaper.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        // A dispatcher may hold jobs a parked claim leased just before the stop: it starts
        // them (they count as running here) or hands claimed ones back, and only then are
        // the attempts waited for. A dispatcher stops within one store call.
        inner.dispatchers.close();
        if tokio::time::timeout(Duration::from_secs(30), inner.dispatchers.wait()).await.is_err() {
            tracing::warn!("a dispatcher did not stop within 30 s");
        }
        inner.attempts.close();
        if tokio::time::timeout(grace, inner.attempts.wait()).await.is_err() {
            tracing::warn!(running = self.running(), "grace period over; handing back running jobs");
            inner.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), inner.attempts.wait()).await;
        }
        inner.stop_background.cancel();
        inner.background.close();
        inner.background.wait().await;
        tracing::info!("engine stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::{Running, spread};
    use std::time::Duration;

    #[test]
    fn a_stale_attempt_is_stopped_but_not_the_later_one_that_took_its_place() {
        let running = Running(Default::default());
        let (job, other) = (ferry_core::JobId::now_v7(), ferry_core::JobId::now_v7());
        let first = running.register(job, 1);
        let bystander = running.register(other, 4);
        // What a heartbeat saw; then the job's first attempt ended and it was claimed here
        // again before the heartbeat's answer came back without it.
        let seen = running.attempts();
        running.remove(job, 1);
        let second = running.register(job, 2);
        for (id, attempt) in seen.into_iter().filter(|(id, _)| *id == job) {
            assert!(!running.cancel_attempt(id, attempt), "attempt 1 is no longer running");
        }
        assert!(!second.is_cancelled() && !first.is_cancelled() && !bystander.is_cancelled());
        assert!(running.cancel_attempt(job, 2));
        assert!(second.is_cancelled());
        assert!(!bystander.is_cancelled());
    }

    #[test]
    fn a_spread_period_is_never_longer_nor_under_four_fifths_and_varies() {
        let period = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..200).map(|_| spread(period)).collect();
        assert!(waits.iter().all(|w| *w <= period && *w >= period * 4 / 5), "{waits:?}");
        assert!(waits.iter().min() < waits.iter().max(), "every wait was the same");
    }
}
