//! Pins what is PostgreSQL's own, where many processes and transactions meet: a store
//! opening on a fresh schema runs no statement before its migrations have created what the
//! statement needs.

use super::*;
use std::sync::Mutex;

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
