//! The engine: per-queue dispatchers, attempt tasks, heartbeats and the reaper.
//!
//! **Dispatch.** One dispatcher per queue holds a semaphore with the queue's concurrency.
//! It waits for a free slot, takes every free slot (up to the claim batch), claims that
//! many jobs in one store call and starts a task per job, each holding its slot until the
//! job's outcome is committed. With nothing to claim it sleeps until the store signals new
//! work for the queue, the next scheduled job is due, or the poll interval passes (a
//! safety net, never the main path).
//!
//! **Leases.** Claimed jobs are leased for `lease_ms`. A heartbeat task renews every lease
//! this process holds every `heartbeat_ms`, in one statement and independently of the
//! jobs' work, so a busy job never looks dead. The lease is several heartbeats long. A job
//! the heartbeat no longer finds under this worker (cancelled, or taken over after a
//! pause) is stopped locally; its result would be refused by the store's fence anyway.
//!
//! **Reaper.** Jobs whose lease expired (their worker died) fail their attempt with
//! `worker_lost` and are retried or dead by the usual rule. Reaping goes through the same
//! fenced transition, so several reapers may race without double-reaping.
//!
//! **Shutdown.** [`Engine::shutdown`] stops claiming, lets running attempts finish within
//! the grace period, then stops the rest and hands them back (`released`: ready again,
//! the attempt does not count).

use crate::executor::{Attempt, Executor, Registry};
use ferry_core::run::RunId;
use ferry_core::time;
use ferry_core::{Decision, ErrorType, ExecError, JobError, JobId, RetryState, decide_after_failure};
use ferry_store::{ClaimRequest, Claimed, ClaimedJob, Finish, FinishResult, Planner, Store, WorkerInfo, WorkerQueue};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Largest serialized output of one attempt; a larger one fails the attempt.
    pub max_output_bytes: usize,
    /// Limits the jobs a workflow run creates are validated against.
    pub job_limits: ferry_core::Limits,
    /// How often runs that nobody advanced are looked for.
    pub sweep_ms: u64,
    /// A running run not advanced for this long is advanced by the sweep.
    pub sweep_idle_ms: u64,
    /// Concurrency limits of workspaces that set none, for starting queued runs.
    pub default_limits: ferry_store::WorkspaceLimits,
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
            max_output_bytes: 1024 * 1024,
            job_limits: ferry_core::Limits::default(),
            sweep_ms: 1_000,
            sweep_idle_ms: 10_000,
            default_limits: ferry_store::WorkspaceLimits::default(),
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    registry: Registry,
    cfg: EngineConfig,
    worker_id: String,
    /// This process's attempts, each with the token that stops it.
    running: Mutex<HashMap<JobId, CancellationToken>>,
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
    /// Each served queue's run-time controls (pause, concurrency).
    controls: HashMap<String, Arc<QueueControl>>,
    /// Notified when a standalone job ended: jobs held for a slot may go now.
    freed: tokio::sync::Notify,
}

/// A queue's run-time settings as this process applies them; refreshed from the store
/// every `poll_ms` by [`watch_queues`].
struct QueueControl {
    /// The configured concurrency, used when the store says nothing.
    configured: usize,
    /// The slots: one permit per attempt that may run at once.
    slots: Arc<Semaphore>,
    /// How many permits the semaphore was sized to.
    sized: Mutex<usize>,
    paused: std::sync::atomic::AtomicBool,
    /// Notified when the settings change.
    changed: tokio::sync::Notify,
}

impl QueueControl {
    fn new(configured: usize) -> Self {
        QueueControl {
            configured,
            slots: Arc::new(Semaphore::new(configured)),
            sized: Mutex::new(configured),
            paused: Default::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn apply(&self, settings: Option<&ferry_store::QueueSettings>) {
        let paused = settings.is_some_and(|s| s.paused);
        let target = settings.and_then(|s| s.concurrency).map_or(self.configured, |c| c as usize);
        let mut changed = self.paused.swap(paused, std::sync::atomic::Ordering::Relaxed) != paused;
        let mut sized = self.sized.lock().unwrap_or_else(|e| e.into_inner());
        if target > *sized {
            self.slots.add_permits(target - *sized);
            changed = true;
        } else if target < *sized {
            // Fewer slots: take the surplus as attempts end, and keep them.
            let (slots, surplus) = (self.slots.clone(), (*sized - target) as u32);
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
            changed = true;
        }
        *sized = target;
        if changed {
            self.changed.notify_waiters();
        }
    }
}

/// Applies the store's queue settings to this process's dispatchers, every `poll_ms`.
async fn watch_queues(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.poll_ms);
    loop {
        match inner.store.queue_settings().await {
            Ok(all) => {
                for (name, control) in &inner.controls {
                    control.apply(all.iter().find(|s| &s.name == name));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read queue settings; keeping the last ones"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.stop_background.cancelled() => return,
        }
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
        let planner = crate::planner(cfg.job_limits.clone(), registry.clone());
        let cfg_controls = cfg
            .queues
            .iter()
            .filter(|q| q.concurrency > 0)
            .map(|q| (q.name.clone(), Arc::new(QueueControl::new(q.concurrency))))
            .collect();
        let inner = Arc::new(Inner {
            store,
            registry,
            cfg,
            worker_id,
            running: Mutex::new(HashMap::new()),
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
            freed: tokio::sync::Notify::new(),
        });
        inner.background.spawn(finish_batches(inner.clone(), finishes));
        inner.background.spawn(advance_runs(inner.clone(), advances));
        if let Some(cancellations) = inner.store.cancellations() {
            inner.background.spawn(stop_cancelled(inner.clone(), cancellations));
        }
        for q in inner.cfg.queues.iter().filter(|q| q.concurrency > 0) {
            inner.dispatchers.spawn(dispatch(inner.clone(), q.clone()));
        }
        inner.background.spawn(heartbeat(inner.clone()));
        inner.background.spawn(watch_queues(inner.clone()));
        inner.background.spawn(reap(inner.clone()));
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
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get(&id) {
            Some(r) => {
                r.cancel();
                true
            }
            None => false,
        }
    }

    /// Attempts running in this process.
    pub fn running(&self) -> usize {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).len()
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

async fn dispatch(inner: Arc<Inner>, queue: QueueConfig) {
    let control =
        inner.controls.get(&queue.name).cloned().unwrap_or_else(|| Arc::new(QueueControl::new(queue.concurrency)));
    let slots = control.slots.clone();
    let wake = inner.store.wakeup(&queue.name);
    let poll = Duration::from_millis(inner.cfg.poll_ms);
    let request = |limit: usize| ClaimRequest {
        queue: queue.name.clone(),
        limit,
        worker: inner.worker_id.clone(),
        lease_ms: inner.cfg.lease_ms,
    };
    // What a parked claim leased while the dispatcher waited, with the slots it held.
    let mut delivered: Option<(Claimed, Vec<OwnedSemaphorePermit>)> = None;
    loop {
        let parked_jobs = delivered.is_some();
        let (claimed, mut permits) = match delivered.take() {
            Some(d) => {
                if !d.0.jobs.is_empty() {
                    metrics::counter!("ferry_parked_claims_total", "queue" => queue.name.clone())
                        .increment(d.0.jobs.len() as u64);
                }
                d
            }
            None => {
                if control.paused.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::select! {
                        _ = control.changed.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = inner.stop_claiming.cancelled() => return,
                    }
                    continue;
                }
                let first = tokio::select! {
                    p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = inner.stop_claiming.cancelled() => return,
                };
                let mut permits = vec![first];
                while permits.len() < inner.cfg.claim_batch {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                match inner.store.claim(request(permits.len())).await {
                    Ok(claimed) => (claimed, permits),
                    Err(e) => {
                        tracing::warn!(queue = %queue.name, error = %e, "claim failed; will retry");
                        drop(permits);
                        tokio::select! {
                            _ = tokio::time::sleep(poll) => {}
                            _ = inner.stop_claiming.cancelled() => return,
                        }
                        continue;
                    }
                }
            }
        };
        let asked = permits.len();
        let jobs = claimed.jobs;
        let got = jobs.len();
        if inner.stop_claiming.is_cancelled() && got > 0 && !parked_jobs {
            // Claimed while shutting down: hand them straight back.
            for job in jobs {
                release(&inner, &job).await;
            }
            return;
        }
        let spare = permits.split_off(got.min(asked));
        for (job, permit) in jobs.into_iter().zip(permits) {
            if let Some(run) = job.run_id {
                let _ = inner.advancer.send(run);
            }
            inner.attempts.spawn(run_attempt(inner.clone(), job, permit));
        }
        if inner.stop_claiming.is_cancelled() {
            // Jobs a parked claim leased may have been reported running before the stop:
            // they run (within the drain's grace) like the attempts already under way.
            return;
        }
        if let Some(wait) = claimed.rate_wait_ms {
            // A rate held work back: new jobs bring no tokens, so only time (or a
            // change of settings) can help.
            drop(spare);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait).min(poll)) => {}
                _ = control.changed.notified() => {}
                _ = inner.stop_claiming.cancelled() => return,
            }
        } else if got < asked {
            // The queue is empty: leave a claim for the free slots in the store, so the
            // transaction that brings work leases it at once (see `ferry_store::park`).
            // Parked first, so that work arriving while the next due time is read finds it.
            let parked = inner.store.park(request(spare.len()));
            let now = time::now_micros();
            let wait = match inner.store.next_due(&queue.name).await {
                Ok(Some(due)) => Duration::from_micros(due.saturating_sub(now).max(0) as u64).min(poll),
                _ => poll,
            };
            let Some(mut parked) = parked else {
                drop(spare);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = inner.stop_claiming.cancelled() => return,
                }
                continue;
            };
            let stopping = tokio::select! {
                claimed = parked.delivered() => {
                    delivered = Some((claimed, spare));
                    continue;
                }
                _ = wake.notified() => false,
                _ = tokio::time::sleep(wait) => false,
                _ = control.changed.notified() => false,
                _ = inner.stop_claiming.cancelled() => true,
            };
            // A transaction may have taken the claim meanwhile: its jobs are ours to run,
            // when stopping too (the top of the loop starts them, then returns).
            if let Some(claimed) = parked.withdraw().await {
                delivered = Some((claimed, spare));
            } else if stopping {
                return;
            }
        }
    }
}

/// How long past its timeout the engine waits for a kind that enforces its own.
const OWN_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Runs the attempt, or answers it from the result cache: a job with a cache key whose
/// workspace has a success under the same key within the kind's TTL gets that output,
/// marked `"cached": true` and `"cached_from": <job id>`, without running. A failed
/// lookup only means running.
async fn run_or_reuse(
    inner: &Inner,
    job: &ClaimedJob,
    executor: &dyn Executor,
    attempt: &Attempt,
    input: serde_json::Value,
) -> Result<serde_json::Value, ExecError> {
    if let (Some(key), Some(policy)) = (&job.cache_key, executor.cache(&input))
        && !policy.ttl.is_zero()
    {
        let since =
            time::now_micros().saturating_sub(time::ms(u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX)));
        match inner.store.cached_output(&job.workspace, key, since).await {
            Ok(Some((from, mut output))) => {
                if let Some(obj) = output.as_object_mut() {
                    obj.insert("cached".into(), true.into());
                    obj.insert("cached_from".into(), from.to_string().into());
                }
                metrics::counter!("ferry_result_cache_total", "kind" => job.kind.clone(), "outcome" => "hit")
                    .increment(1);
                return Ok(output);
            }
            Ok(None) => {
                metrics::counter!("ferry_result_cache_total", "kind" => job.kind.clone(), "outcome" => "miss")
                    .increment(1);
            }
            Err(e) => tracing::warn!(job = %job.id, error = %e, "result cache lookup failed; running"),
        }
    }
    executor.run(attempt, input).await
}

/// How an attempt stopped early.
enum Stop {
    Cancelled,
    Shutdown,
}

async fn run_attempt(inner: Arc<Inner>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let cancel = CancellationToken::new();
    inner.running.lock().unwrap_or_else(|e| e.into_inner()).insert(job.id, cancel.clone());
    let wait = (job.started_at - job.run_at).max(0) as f64 / 1e6;
    metrics::histogram!("ferry_pickup_wait_seconds", "queue" => job.queue.clone()).record(wait);

    let started = Instant::now();
    // The attempt may not run past the retry budget either.
    let mut timeout_ms = job.timeout_ms;
    let mut cut_by_budget = false;
    if let Some(deadline) = job.deadline_at {
        let left = (deadline - job.started_at).max(0) as u64 / 1000;
        if left < timeout_ms {
            timeout_ms = left;
            cut_by_budget = true;
        }
    }
    let attempt = Attempt {
        job_id: job.id,
        number: job.attempt,
        cancel: cancel.clone(),
        timeout: Duration::from_millis(timeout_ms),
        soft_timeout: job.soft_timeout_ms.map(|t| Duration::from_millis(t.min(timeout_ms))),
    };
    let budget_over = job.deadline_at.is_some_and(|d| d <= job.started_at);
    let outcome: Result<Result<serde_json::Value, ExecError>, Stop> = match inner.registry.get(&job.kind) {
        // Claimed too late to start within the budget: the executor does not run at all.
        _ if budget_over => Ok(Err(ExecError::new(
            ErrorType::BudgetExhausted,
            "the retry budget ran out before the attempt could start",
        ))),
        // The API refuses unknown kinds, so this is a worker built without a kind another
        // node accepts: retryable, so that a worker that has it can take the job.
        None => Ok(Err(ExecError::new(
            ErrorType::Validation,
            format!("this worker has no executor for kind `{}`", job.kind),
        )
        .retryable(true))),
        Some(executor) => match serde_json::from_str::<serde_json::Value>(&job.input) {
            Err(e) => Ok(Err(ExecError::new(ErrorType::Internal, format!("stored input is not JSON: {e}")))),
            Ok(input) => tokio::select! {
                r = run_or_reuse(&inner, &job, executor.as_ref(), &attempt, input) => Ok(r),
                // A kind that ends its own attempts gets a grace period to report.
                _ = tokio::time::sleep(Duration::from_millis(timeout_ms) + if executor.enforces_timeout() {
                    OWN_TIMEOUT_GRACE
                } else {
                    Duration::ZERO
                }) => Ok(Err(ExecError::new(
                    ErrorType::Timeout,
                    if cut_by_budget {
                        format!("the retry budget ran out after {timeout_ms} ms of this attempt")
                    } else {
                        format!("attempt timed out after {timeout_ms} ms")
                    },
                ))),
                _ = cancel.cancelled() => Err(Stop::Cancelled),
                _ = inner.hard_stop.cancelled() => Err(Stop::Shutdown),
            },
        },
    };
    // Executors holding resources outside their future watch the token.
    cancel.cancel();
    let elapsed = started.elapsed().as_secs_f64();

    let result = match outcome {
        // Cancelled by a user or the lease is gone: the store already moved the job on
        // (a node job's run learns it now rather than at the next sweep).
        Err(Stop::Cancelled) => {
            if let Some(run) = job.run_id {
                let _ = inner.advancer.send(run);
            }
            None
        }
        Err(Stop::Shutdown) => Some(FinishResult::Released),
        Ok(Ok(output)) => Some(succeeded(&inner, &job, output)),
        Ok(Err(e)) => Some(failed(&job, e)),
    };
    let label = match &result {
        None => "cancelled",
        Some(FinishResult::Succeeded { .. }) => "succeeded",
        Some(FinishResult::Released) => "released",
        Some(_) => "failed",
    };
    metrics::histogram!("ferry_attempt_duration_seconds", "queue" => job.queue.clone(), "kind" => job.kind.clone(), "outcome" => label)
        .record(elapsed);
    if let Some(result) = result {
        let final_state = match &result {
            FinishResult::Succeeded { .. } => Some("succeeded"),
            FinishResult::Dead { .. } => Some("dead"),
            _ => None,
        };
        let fin = Finish { id: job.id, attempt: job.attempt, queue: job.queue.clone(), result };
        if finish(&inner, fin).await {
            match job.run_id {
                Some(run) => {
                    let _ = inner.advancer.send(run);
                }
                None => inner.freed.notify_one(),
            }
            if let Some(state) = final_state {
                metrics::counter!("ferry_jobs_finished_total", "queue" => job.queue.clone(), "kind" => job.kind.clone(), "state" => state)
                    .increment(1);
            }
        }
    }
    inner.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.id);
    // The slot is freed only now that the attempt's end is committed: freeing it earlier
    // would let the next claim commit first, and the store would record more attempts of
    // the queue running at once than its concurrency allows.
    drop(permit);
}

fn succeeded(inner: &Inner, job: &ClaimedJob, output: serde_json::Value) -> FinishResult {
    let size = serde_json::to_vec(&output).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > inner.cfg.max_output_bytes {
        let error = JobError {
            error_type: ErrorType::ResourceLimit,
            message: format!("output is {size} bytes; the limit is {} bytes", inner.cfg.max_output_bytes),
            retryable: false,
        };
        return decide(job, error, None, None);
    }
    FinishResult::Succeeded { output }
}

fn failed(job: &ClaimedJob, e: ExecError) -> FinishResult {
    decide(job, e.to_job_error(), e.retry_after, e.output)
}

fn decide(
    job: &ClaimedJob,
    error: JobError,
    retry_after: Option<Duration>,
    output: Option<serde_json::Value>,
) -> FinishResult {
    let state = RetryState {
        attempts_counted: job.attempts_counted,
        max_attempts: job.max_attempts,
        deadline_at: job.deadline_at,
        backoff: &job.backoff,
    };
    let now = time::now_micros();
    match decide_after_failure(state, error.clone(), retry_after, now, fastrand::f64()) {
        Decision::Retry { run_at, error } => FinishResult::Retry { retry_in: run_at - now, error, output },
        Decision::Dead { error: final_error } => {
            FinishResult::Dead { error: final_error, attempt_error: error, output }
        }
    }
}

/// Records an attempt's end through the finisher. Returns whether the store accepted it.
async fn finish(inner: &Inner, fin: Finish) -> bool {
    let (tx, rx) = oneshot::channel();
    if inner.finisher.send((fin, tx)).is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// Gathers the ends of attempts that finished at about the same time into one store call,
/// so that a busy queue costs the store one request per batch rather than one per job.
/// Store outages are retried for up to one lease: past that the reaper owns the jobs.
async fn finish_batches(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<(Finish, oneshot::Sender<bool>)>) {
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

async fn release(inner: &Inner, job: &ClaimedJob) {
    let fin = Finish { id: job.id, attempt: job.attempt, queue: job.queue.clone(), result: FinishResult::Released };
    finish(inner, fin).await;
}

mod background;
pub use background::prune_loop;
use background::{advance_runs, heartbeat, reap, stop_cancelled};
