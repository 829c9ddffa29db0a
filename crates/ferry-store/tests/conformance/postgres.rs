//! Pins what is PostgreSQL's own, where many processes and transactions meet: a store
//! opening on a fresh schema runs no statement before its migrations have created what the
//! statement needs; a worker's heartbeat and its batched finishes lock the same jobs in
//! one order, so they never deadlock; and a rate set on one node holds on another whose
//! cached rates do not know it yet.

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What Ferry's store logs, from every test of this binary (one subscriber per process).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log of `ferry_store` (and of this binary's spans), collected from the
/// first call on. A global subscriber: a thread's own would miss events whose callsites
/// other tests' threads had registered first.
fn store_log() -> &'static Log {
    static LOG: std::sync::OnceLock<Log> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("ferry_store=debug,conformance=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_no_statement_before_its_migrations() {
    use tracing::Instrument;
    let log = store_log();
    // A fresh schema: nothing of Ferry's exists in it before the store opens. What the
    // store logs while it opens carries this span.
    let opening = tracing::info_span!("opening_a_fresh_schema");
    let Some(b) = postgres().instrument(opening).await else { return };
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("opening_a_fresh_schema")).collect();
    assert!(
        lines.iter().any(|l| l.contains("applied PostgreSQL migration version=9")),
        "the store migrated the fresh schema:\n{text}"
    );
    for sign in ["does not exist", "not warmed", "ERROR", "WARN"] {
        let bad: Vec<&&str> = lines.iter().filter(|l| l.contains(sign)).collect();
        assert!(bad.is_empty(), "a statement ran before the migrations it needs (`{sign}`): {bad:#?}");
    }
    // The connections opened after them are ready for work.
    b.store.submit(vec![job(None, 0)]).await.unwrap();
    assert_eq!(b.store.claim(claim_req("w", 5)).await.unwrap().jobs.len(), 1);
    b.cleanup().await;
}

/// Rounds of the race, each over a fresh set of running jobs.
const ROUNDS: usize = 25;
/// Jobs per round, finished in batches of [`BATCH`].
const JOBS: usize = 200;
const BATCH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_heartbeats_and_batched_finishes_never_deadlock() {
    let Some(b) = postgres().await else { return };
    let store = b.store.clone();
    for round in 0..ROUNDS {
        store.submit((0..JOBS).map(|_| job(None, 0)).collect()).await.unwrap();
        let claimed = store.claim(claim_req("w", JOBS)).await.unwrap().jobs;
        assert_eq!(claimed.len(), JOBS);
        // The heartbeat lists the jobs in one order, the finishes batch them in the other:
        // each statement locks several rows, as the engine's do.
        let mut ids: Vec<JobId> = claimed.iter().map(|c| c.id).collect();
        ids.sort();
        let finished = Arc::new(AtomicBool::new(false));
        let beating = {
            let (store, finished) = (store.clone(), finished.clone());
            tokio::spawn(async move {
                let mut beats = 0;
                while !finished.load(Ordering::Relaxed) || beats == 0 {
                    store.heartbeat("w", 60_000, &ids).await?;
                    beats += 1;
                }
                Ok::<_, StoreError>(beats)
            })
        };
        let mut finishes = Vec::new();
        for batch in claimed.chunks(BATCH) {
            let store = store.clone();
            let fins: Vec<Finish> = batch.iter().rev().map(|c| succeed(c.id, c.attempt)).collect();
            finishes.push(tokio::spawn(async move { store.finish_many(fins).await }));
        }
        let mut applied = 0;
        for f in finishes {
            match f.await.unwrap() {
                Ok(done) => applied += done.iter().filter(|d| **d).count(),
                Err(e) => panic!("round {round}: a batched finish failed (40P01 is a deadlock): {e}"),
            }
        }
        finished.store(true, Ordering::Relaxed);
        if let Err(e) = beating.await.unwrap() {
            panic!("round {round}: a heartbeat failed (40P01 is a deadlock): {e}");
        }
        assert_eq!(applied, JOBS, "round {round}: every attempt ended once");
    }
    assert!(store.queue_stats().await.unwrap().iter().all(|q| q.running == 0));
    b.cleanup().await;
}

/// Two nodes on one database: node A has read the rates (none) when node B sets a label
/// rate; A's cache is still fresh, so A takes the plain claim, which must not start the
/// labelled jobs past the rate. The plain claim checks for rates itself and claims
/// nothing; once A reads the rates again, the rated claim starts the burst (1 at 1/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rate_set_on_another_node_holds_before_this_node_reads_it() {
    let Some(a) = postgres().await else { return };
    let schema = a.schema.clone().expect("a schema");
    let opts = PgOptions { url: pg_url(), schema: Some(schema), max_connections: 4, application_name: "node-b".into() };
    let b = PgStore::open(&opts).await.expect("node B");
    // A reads the rates (none), and keeps them for up to a second.
    assert!(a.store.claim(claim_req("a", 10)).await.unwrap().jobs.is_empty());
    assert!(!b.set_label_rate("default", "api", Some(1.0)).await.unwrap(), "a new rate");
    let labelled = (0..10).map(|_| {
        let mut s = noop();
        s.labels = Some([("api".to_string(), "github".to_string())].into());
        spec(s)
    });
    a.store.submit(labelled.collect()).await.unwrap();
    let first = a.store.claim(claim_req("a", 10)).await.unwrap().jobs.len();
    assert!(first <= 1, "node A started {first} labelled jobs at once under a rate of 1/s");
    b.close().await;
    a.cleanup().await;
}
