//! `ferry bench`'s raw baseline for SQLite: the engine's write pattern without the
//! engine. Not part of the store's API: `ferry bench` is its only caller, and the module
//! is hidden from the crate's docs. It lives under `sqlite` because it drives the
//! writer's own statements (`Writer::submit`, `claim`, `finish_many`, `flush_events`) on
//! a connection of its own, which no public call can do: through [`crate::Store`] the
//! same work would also pay for the writer thread's channel and group commit, and the
//! figure would no longer be the floor the engine is compared with.

use super::{Durability, SqliteOptions, SqliteStore, WRITER_CACHE_KIB, Writer};
use crate::{Admission, ClaimRequest, Finish, FinishResult, StoreError};
use ferry_core::time;
use ferry_core::{JobId, NewJob};
use rusqlite::Connection;
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

/// The raw limit of this backend for the engine's write pattern: the same statements a
/// job goes through (insert and its event; promote, claim, attempt and its event; finish,
/// attempt end and its event), run directly on a fresh database in `dir` without the
/// engine, in transactions of `batch` jobs. Returns jobs per second. `ferry bench` shows
/// it beside the end-to-end figure so the engine's overhead is a visible ratio.
pub fn raw_baseline(dir: &Path, jobs: usize, batch: usize, durability: Durability) -> Result<f64, StoreError> {
    let store = SqliteStore::open(&SqliteOptions { data_dir: dir.to_path_buf(), durability })?;
    let path = store.path().to_path_buf();
    drop(store);
    let conn = Connection::open(&path)?;
    let sync = if durability == Durability::Full { "FULL" } else { "NORMAL" };
    // The writer's own settings, as `SqliteStore::open` puts them in.
    conn.execute_batch(
        &super::WRITER_PRAGMAS.replace("{sync}", sync).replace("{cache_kib}", &WRITER_CACHE_KIB.to_string()),
    )?;
    let mut w = Writer {
        conn,
        woken: HashSet::new(),
        now: 0,
        poisoned: None,
        rates: None,
        parks: Default::default(),
        touched: RefCell::default(),
        noted: RefCell::default(),
    };
    let backoff = ferry_core::Backoff::default();
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < jobs {
        let n = batch.min(jobs - done);
        // No stream watches here: forget the logs written, as the writer does per group.
        w.touched.get_mut().clear();
        w.now = time::now_micros();
        w.conn.execute_batch(*super::writer::BEGIN_GROUP)?;
        let new: Vec<NewJob> = (0..n)
            .map(|_| NewJob {
                id: JobId::now_v7(),
                workspace: "default".into(),
                user: "bench".into(),
                kind: "noop".into(),
                input: serde_json::Value::Null,
                queue: "default".into(),
                priority: 0,
                max_attempts: 3,
                backoff: backoff.clone(),
                timeout_ms: 30_000,
                soft_timeout_ms: None,
                total_timeout_ms: None,
                run_at: None,
                labels: Default::default(),
                idempotency_key: None,
                request_hash: None,
                cache_key: None,
                breaker: None,
                ordering_key: None,
            })
            .collect();
        w.submit(new, Admission::default())?;
        w.flush_events()?;
        w.conn.execute_batch(*super::COMMIT)?;
        w.now = time::now_micros();
        w.conn.execute_batch(*super::writer::BEGIN_GROUP)?;
        let claimed =
            w.claim(&ClaimRequest { queue: "default".into(), limit: n, worker: "bench".into(), lease_ms: 30_000 })?;
        w.flush_events()?;
        w.conn.execute_batch(*super::COMMIT)?;
        w.now = time::now_micros();
        w.conn.execute_batch(*super::writer::BEGIN_GROUP)?;
        let fins: Vec<Finish> = claimed
            .jobs
            .into_iter()
            .map(|job| Finish {
                id: job.id,
                attempt: job.attempt,
                queue: job.queue,
                result: FinishResult::Succeeded { output: serde_json::Value::Null },
            })
            .collect();
        w.finish_many(&fins)?;
        w.flush_events()?;
        w.conn.execute_batch(*super::COMMIT)?;
        done += n;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}
