//! The prefetch buffer on a real SQLite store: jobs leased ahead of free slots keep
//! priority order, and go back to the queue at once on a drain or a pause, never lost and
//! never run twice.
//!
//! On such a queue a slot goes back when its job's work ends, before the end is recorded,
//! but only while fewer than `EngineConfig::unrecorded_max` ends wait to be recorded: with
//! the store's writes blocked, exactly that many slots go back early and the next waits
//! for the store.
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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

const BUFFER: usize = 3;

/// The jobs started, in order; a watch, so that a test can wait for the next start.
type Starts = Arc<watch::Sender<Vec<JobId>>>;

/// The kinds of these tests: `record` notes its job's start, `gate` waits for the gate.
struct Kinds {
    started: Starts,
    gate: Arc<Semaphore>,
}

struct Record(Starts);
struct Gate(Arc<Semaphore>, Starts);

#[async_trait]
impl Executor for Record {
    fn kind(&self) -> &'static str {
        "record"
    }
    fn validate(&self, _: &Value) -> Result<(), SpecError> {
        Ok(())
    }
    async fn run(&self, attempt: &Attempt, _: Value) -> Result<Value, ferry_core::ExecError> {
        self.0.send_modify(|s| s.push(attempt.job_id));
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
        self.1.send_modify(|s| s.push(attempt.job_id));
        let _open = self.0.acquire().await;
        Ok(json!({}))
    }
}

impl Kinds {
    fn new() -> Self {
        Kinds { started: Arc::new(watch::channel(Vec::new()).0), gate: Arc::new(Semaphore::new(0)) }
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(Record(self.started.clone()));
        r.register(Gate(self.gate.clone(), self.started.clone()));
        r
    }

    fn started(&self) -> Vec<JobId> {
        self.started.borrow().clone()
    }

    /// Waits until more than `n` jobs started, for at most `wait`; whether they did.
    async fn more_than(&self, n: usize, wait: Duration) -> bool {
        let mut rx = self.started.subscribe();
        matches!(tokio::time::timeout(wait, rx.wait_for(|s| s.len() > n)).await, Ok(Ok(_)))
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
    open_file(dir).await.0
}

/// Opens the store, and says where its database file is.
async fn open_file(dir: &tempfile::TempDir) -> (Arc<dyn Store>, PathBuf) {
    let opts = SqliteOptions { data_dir: dir.path().to_path_buf(), durability: Durability::Process };
    let store = SqliteStore::open(&opts).expect("store");
    let path = store.path().to_path_buf();
    (Arc::new(store), path)
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
    held_with(store, kinds, config()).await
}

/// [`held`], with `cfg` (whose queue must be [`config`]'s).
async fn held_with(store: &Arc<dyn Store>, kinds: &Kinds, cfg: EngineConfig) -> (Engine, JobId, Vec<JobId>) {
    let gate = submit(store.as_ref(), "gate", 100, 1).await[0];
    let low = submit(store.as_ref(), "record", 0, 10).await;
    let engine = Engine::start(store.clone(), kinds.registry(), cfg);
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

/// Opens the gate with the store's writes blocked, so that no end is recorded, and checks
/// that exactly `early` buffered jobs start (through slots that went back before their
/// jobs' ends were recorded) while an engine whose bound on unrecorded ends is `bound`
/// waits, then that every job runs once when the writes go through again.
async fn check_unrecorded(bound: usize, early: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = open_file(&dir).await;
    let kinds = Kinds::new();
    let cfg = EngineConfig { unrecorded_max: bound, ..config() };
    let (engine, gate, low) = held_with(&store, &kinds, cfg).await;

    // Another connection takes the database's write lock (the store runs in WAL mode:
    // its reads go on). The store's writer then waits in SQLite's busy handler, for up to
    // its 10 s busy timeout, so the lock is held far less than that: a few waits of well
    // under a second.
    let blocker = rusqlite::Connection::open(&path).expect("second connection");
    blocker.busy_timeout(Duration::from_secs(5)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    kinds.gate.add_permits(1);
    if early > 0 {
        assert!(kinds.more_than(early, Duration::from_secs(5)).await, "jobs did not start: {:?}", kinds.started());
    }
    // The one bounded wait: nothing signals that a job did not start. A slot that goes
    // back starts the next buffered job within milliseconds; 300 ms without a start means
    // the slot is held until an end is recorded.
    let more = kinds.more_than(1 + early, Duration::from_millis(300)).await;
    let started = kinds.started();
    assert!(!more, "bound {bound}: more than {early} buffered jobs started with no end recorded: {started:?}");
    assert_eq!(started[0], gate);
    assert!(started[1..].iter().all(|j| low.contains(j)), "{started:?}");
    // None of their ends is recorded: each slot that went back, went back early.
    assert_eq!(count(store.as_ref(), &started, JobState::Running).await, started.len());
    blocker.execute_batch("ROLLBACK").unwrap();

    until("every job ran", || async { count(store.as_ref(), &low, JobState::Succeeded).await == low.len() }).await;
    assert_eq!(state(store.as_ref(), gate).await, JobState::Succeeded);
    let mut ran = kinds.started();
    ran.sort();
    ran.dedup();
    assert_eq!((ran.len(), kinds.started().len()), (1 + low.len(), 1 + low.len()), "a job ran twice or not at all");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn past_the_bound_on_unrecorded_ends_a_slot_waits_for_the_store() {
    // The gate's end and the first buffered job's take the two permits, so their slots go
    // back early and start two buffered jobs; the second one's end finds none, and its
    // slot stays held until an end is recorded.
    check_unrecorded(2, 2).await;
}

#[tokio::test]
async fn below_the_bound_on_unrecorded_ends_every_slot_goes_back_before_the_end_is_recorded() {
    // Every buffered job starts with nothing recorded; the next needs a claim, which
    // waits for the store like the ends do.
    check_unrecorded(10, BUFFER).await;
}

#[tokio::test]
async fn with_no_room_for_unrecorded_ends_every_slot_waits_for_the_store() {
    check_unrecorded(0, 0).await;
}
