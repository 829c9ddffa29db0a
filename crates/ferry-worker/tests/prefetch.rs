//! The prefetch buffer on a real SQLite store: jobs leased ahead of free slots keep
//! priority order, and go back to the queue at once on a drain or a pause, never lost and
//! never run twice.
//!
//! Each test holds the queue's one slot with a `gate` job (it waits until the test opens
//! the gate), so that the jobs claimed meanwhile stay in the buffer; the buffer has a fixed
//! size here (`EngineConfig::prefetch`), where a server sizes it by the observed rate.

use async_trait::async_trait;
use ferry_core::{AttemptOutcome, JobId, JobSpec, JobState, Limits, SpecError};
use ferry_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use ferry_store::{QueueSettings, Store};
use ferry_worker::{Attempt, Engine, EngineConfig, Executor, QueueConfig, Registry};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const BUFFER: usize = 3;

/// The kinds of these tests: `record` notes its job's start, `gate` waits for the gate.
struct Kinds {
    started: Arc<Mutex<Vec<JobId>>>,
    gate: Arc<Semaphore>,
}

struct Record(Arc<Mutex<Vec<JobId>>>);
struct Gate(Arc<Semaphore>, Arc<Mutex<Vec<JobId>>>);

#[async_trait]
impl Executor for Record {
    fn kind(&self) -> &'static str {
        "record"
    }
    fn validate(&self, _: &Value) -> Result<(), SpecError> {
        Ok(())
    }
    async fn run(&self, attempt: &Attempt, _: Value) -> Result<Value, ferry_core::ExecError> {
        self.0.lock().unwrap().push(attempt.job_id);
        Ok(json!({}))
    }
}

#[async_trait]
impl Executor for Gate {
    fn kind(&self) -> &'static str {
        "gate"
    }
    fn validate(&self, _: &Value) -> Result<(), SpecError> {
        Ok(())
    }
    async fn run(&self, attempt: &Attempt, _: Value) -> Result<Value, ferry_core::ExecError> {
        self.1.lock().unwrap().push(attempt.job_id);
        let _open = self.0.acquire().await;
        Ok(json!({}))
    }
}

impl Kinds {
    fn new() -> Self {
        Kinds { started: Arc::default(), gate: Arc::new(Semaphore::new(0)) }
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(Record(self.started.clone()));
        r.register(Gate(self.gate.clone(), self.started.clone()));
        r
    }

    fn started(&self) -> Vec<JobId> {
        self.started.lock().unwrap().clone()
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        queues: vec![QueueConfig { name: "default".into(), concurrency: 1 }],
        prefetch: Some(BUFFER),
        // Long leases: a job back in the queue came back because it was handed back.
        lease_ms: 60_000,
        poll_ms: 50,
        ..EngineConfig::default()
    }
}

async fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let opts = SqliteOptions { data_dir: dir.path().to_path_buf(), durability: Durability::Process };
    Arc::new(SqliteStore::open(&opts).expect("store"))
}

async fn submit(store: &dyn Store, kind: &str, priority: i32, n: usize) -> Vec<JobId> {
    let jobs = (0..n)
        .map(|_| {
            let spec = JobSpec { kind: kind.into(), priority: Some(priority), ..Default::default() };
            spec.validate("default", "test", ferry_core::time::now_micros(), &Limits::default()).expect("valid")
        })
        .collect();
    store.submit(jobs).await.expect("submit").into_iter().map(|s| s.id).collect()
}

async fn state(store: &dyn Store, id: JobId) -> JobState {
    store.get_job("default", id).await.expect("read").expect("job").state
}

async fn count(store: &dyn Store, ids: &[JobId], want: JobState) -> usize {
    let mut n = 0;
    for id in ids {
        if state(store, *id).await == want {
            n += 1;
        }
    }
    n
}

/// Waits until `cond` holds (checked every 10 ms; fails after 10 s).
async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts an engine whose one slot the gate job holds and whose buffer is full of `low`.
async fn held(store: &Arc<dyn Store>, kinds: &Kinds) -> (Engine, JobId, Vec<JobId>) {
    let gate = submit(store.as_ref(), "gate", 100, 1).await[0];
    let low = submit(store.as_ref(), "record", 0, 10).await;
    let engine = Engine::start(store.clone(), kinds.registry(), config());
    until("the gate job runs", || async { kinds.started() == vec![gate] }).await;
    until("the buffer is full", || async { count(store.as_ref(), &low, JobState::Running).await == BUFFER }).await;
    (engine, gate, low)
}

#[tokio::test]
async fn a_higher_priority_job_claimed_later_overtakes_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let kinds = Kinds::new();
    let (engine, gate, low) = held(&store, &kinds).await;
    let high = submit(store.as_ref(), "record", 50, 5).await;
    kinds.gate.add_permits(1);
    let all: Vec<JobId> = low.iter().chain(&high).copied().collect();
    until("every job ran", || async { count(store.as_ref(), &all, JobState::Succeeded).await == all.len() }).await;
    let order = kinds.started();
    assert_eq!(order.len(), 1 + all.len(), "each job ran once: {order:?}");
    assert_eq!(order[0], gate);
    let at: Vec<usize> = high.iter().map(|h| order.iter().position(|j| j == h).expect("ran")).collect();
    let (first, last) = (*at.iter().min().unwrap(), *at.iter().max().unwrap());
    // Once the first high-priority job is claimed into the buffer, every other one goes
    // ahead of the low ones buffered with them (a refill is merged in claim order): the
    // five run back to back.
    assert_eq!(last - first + 1, high.len(), "high-priority jobs interleaved with buffered ones: {at:?}");
    // And only jobs buffered before they came ran ahead of them.
    assert!(first <= 1 + BUFFER, "the high-priority jobs waited behind more than the buffer: {at:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_drain_hands_the_buffer_back_at_once_and_nothing_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let kinds = Kinds::new();
    let (engine, gate, low) = held(&store, &kinds).await;
    let drain = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown(Duration::from_secs(30)).await }
    });
    // Back in the queue long before their 60 s leases could expire, none started.
    until("the buffer is handed back", || async { count(store.as_ref(), &low, JobState::Queued).await == low.len() })
        .await;
    assert_eq!(kinds.started(), vec![gate], "a buffered job started during the drain");
    kinds.gate.add_permits(1);
    drain.await.unwrap();
    assert_eq!(state(store.as_ref(), gate).await, JobState::Succeeded);
    // A new engine runs every job once; a handed-back job's attempt did not count.
    let engine = Engine::start(store.clone(), kinds.registry(), EngineConfig { prefetch: None, ..config() });
    until("every job ran", || async { count(store.as_ref(), &low, JobState::Succeeded).await == low.len() }).await;
    let mut ran = kinds.started();
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), 1 + low.len(), "a job ran twice or not at all");
    for id in &low {
        let job = store.get_job("default", *id).await.unwrap().unwrap();
        let outcomes: Vec<_> = job.attempts.iter().map(|a| a.outcome).collect();
        let ran = outcomes.iter().filter(|o| **o != Some(AttemptOutcome::Released)).count();
        assert_eq!((ran, outcomes.last()), (1, Some(&Some(AttemptOutcome::Succeeded))), "{job:?}");
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pause_hands_the_buffer_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let kinds = Kinds::new();
    let (engine, gate, low) = held(&store, &kinds).await;
    let paused = QueueSettings { name: "default".into(), paused: true, ..Default::default() };
    store.set_queue_settings(paused.clone()).await.unwrap();
    until("the buffer is handed back", || async { count(store.as_ref(), &low, JobState::Queued).await == low.len() })
        .await;
    kinds.gate.add_permits(1);
    until("the gate job ends", || async { state(store.as_ref(), gate).await == JobState::Succeeded }).await;
    assert_eq!(kinds.started(), vec![gate], "a job started while the queue was paused");
    store.set_queue_settings(QueueSettings { paused: false, ..paused }).await.unwrap();
    until("every job ran", || async { count(store.as_ref(), &low, JobState::Succeeded).await == low.len() }).await;
    assert_eq!(kinds.started().len(), 1 + low.len(), "each job ran once");
    engine.shutdown(Duration::from_secs(5)).await;
}
