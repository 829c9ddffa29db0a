//! The SQLite backend: one file in the data directory, in WAL mode, with group commit.
//!
//! SQLite allows one writer at a time, so the backend embraces it: a single writer
//! thread owns the write connection and serves every write request (submits, claims,
//! finishes, heartbeats, cancels) from a channel. Whatever has queued up while the last
//! transaction committed goes into the next one, each request inside its own savepoint so
//! that one failing request (an idempotency conflict) does not undo its neighbours. A
//! request is answered only after its transaction committed. Under load this turns
//! thousands of small writes into a few large transactions, so durability does not cost a
//! commit per job.
//!
//! Reads run on a small pool of read connections on Tokio's blocking threads; WAL lets
//! them proceed while the writer writes.
//!
//! Durability: with [`Durability::Process`] (the default) SQLite runs `synchronous=NORMAL`:
//! a committed transaction is in the WAL file and survives a crash of the process, but not
//! necessarily a power cut. [`Durability::Full`] runs `synchronous=FULL`: one fsync per
//! group commit, which survives a power cut.
//!
//! The data directory holds an exclusive lock file, so at most one process uses it. That
//! is why [`SqliteStore::open`] may treat every job found `running` as abandoned by a
//! previous, crashed process: their leases are expired at once and the reaper retries
//! them with `worker_lost`, without waiting for the lease to run out.

use crate::{
    CancelOutcome, ClaimRequest, Claimed, ClaimedJob, DeleteOutcome, Event, EventSignal, Finish, FinishResult,
    JobFilter, JobRecord, LabelRate, Page, Parked, QueueStats, ReplayOutcome, Store, StoreError, Subject, Submitted,
    Wakeups, WorkerInfo,
};
/// The raw baseline `ferry bench` shows beside its end-to-end figure: not part of the
/// store's API (hidden from its docs), a child module so it runs the writer's own code.
#[doc(hidden)]
pub mod bench;
mod runs;
mod tx;

use crate::park::{Park, Parks};
use crate::rate::{self, Rates};
use crate::rules;
use crate::runs::{
    Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunPage, WorkflowSummary,
    WorkflowVersion,
};
use crate::submission::{self, Resolved, Stored};
use crate::tokens::TOKEN_COLUMNS;
use crate::{
    Admission, NewToken, QueueSettings, QueueShare, ReopenOutcome, TokenRecord, WorkspaceLimits, row, transition,
};
use async_trait::async_trait;
use ferry_core::run::{RunId, RunState};
use ferry_core::time::{self, Micros};
use ferry_core::{JobId, JobState, NewJob};
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, ToSql, params};
use serde_json::json;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../sql/sqlite/migrations/0001_jobs.sql")),
    (2, include_str!("../sql/sqlite/migrations/0002_workers.sql")),
    (3, include_str!("../sql/sqlite/migrations/0003_exec.sql")),
    (4, include_str!("../sql/sqlite/migrations/0004_workflows.sql")),
    (5, include_str!("../sql/sqlite/migrations/0005_tokens.sql")),
    (6, include_str!("../sql/sqlite/migrations/0006_admission.sql")),
    (7, include_str!("../sql/sqlite/migrations/0007_queue_settings.sql")),
    (8, include_str!("../sql/sqlite/migrations/0008_rates.sql")),
    (9, include_str!("../sql/sqlite/migrations/0009_tenancy.sql")),
    (10, include_str!("../sql/sqlite/migrations/0010_share_rate.sql")),
];
const PRUNE: &str = include_str!("../sql/sqlite/prune.sql");
const INSERT_JOB: &str = include_str!("../sql/sqlite/insert_job.sql");
const PROMOTE_DUE: &str = include_str!("../sql/sqlite/promote_due.sql");
const CLAIM: &str = include_str!("../sql/sqlite/claim.sql");
const CLAIM_ONE: &str = include_str!("../sql/sqlite/claim_one.sql");
const FINISH: &str = include_str!("../sql/sqlite/finish.sql");
const HEARTBEAT: &str = include_str!("../sql/sqlite/heartbeat.sql");
const QUEUE_STATS: &str = include_str!("../sql/sqlite/queue_stats.sql");
/// The closed flag, or any unrevoked token: either keeps a store closed, so that no race
/// between `reopen` and a token's creation can open a store that has a token.
const AUTH_CLOSED: &str =
    "SELECT closed OR EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) FROM auth_state WHERE id = 1";
const QUEUE_STATS_WORKSPACE: &str = include_str!("../sql/sqlite/queue_stats_workspace.sql");
const CACHED_OUTPUT: &str = "SELECT id, output FROM jobs WHERE workspace = ?1 AND cache_key = ?2 \
     AND state = 'succeeded' AND finished_at >= ?3 AND output IS NOT NULL ORDER BY finished_at DESC LIMIT 1";
const INSERT_EVENT: &str = "INSERT INTO events (job_id, at, type, data) VALUES (?1, ?2, ?3, ?4)";
const JOB_COLUMNS: &str = "id, workspace, user_id, kind, queue, state, priority, input, labels, max_attempts, \
     backoff, timeout_ms, total_timeout_ms, idempotency_key, created_at, run_at, deadline_at, attempt, \
     attempt_base, worker_id, lease_expires_at, finished_at, updated_at, output, error, soft_timeout_ms";
const CLAIMED_COLUMNS: &str = "id, kind, queue, input, attempt, attempt_base, max_attempts, backoff, \
     timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, worker_id, lease_expires_at";

/// How often the checkpoint thread folds the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// WAL size (pages) past which the writer checkpoints by itself: only if the checkpoint
/// thread fell that far behind. SQLite's default is 1000.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 20_000;
/// Most write requests folded into one transaction.
const MAX_GROUP: usize = 2048;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Page cache of the writer, in KiB. Kept modest on purpose: SQLite walks the cache's
/// hash table at the end of every write transaction, so a large cache costs time on each
/// group commit, while the hot pages (the right edge of each index) are few.
const WRITER_CACHE_KIB: i64 = 8192;

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives a crash of the process (`synchronous=NORMAL` in WAL mode).
    #[default]
    Process,
    /// Survives a power cut: an fsync per group commit (`synchronous=FULL`).
    Full,
}

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub data_dir: PathBuf,
    pub durability: Durability,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Cmd {
    Submit(Vec<NewJob>, Admission, Reply<Vec<Submitted>>),
    SetLimits(String, WorkspaceLimits, Reply<()>),
    SetQueue(QueueSettings, Reply<()>),
    Claim(ClaimRequest, Reply<Claimed>),
    SetLabelRate(String, String, Option<f64>, Reply<bool>),
    FinishMany(Vec<Finish>, Reply<Vec<bool>>),
    Heartbeat(String, u64, Vec<JobId>, Reply<Vec<JobId>>),
    RegisterWorker(WorkerInfo, Reply<()>),
    UnregisterWorker(String, Reply<()>),
    Prune(u64, usize, Reply<usize>),
    Cancel(String, JobId, Reply<CancelOutcome>),
    Replay(String, JobId, Reply<ReplayOutcome>),
    Delete(String, JobId, Reply<DeleteOutcome>),
    PutWorkflow(String, String, String, serde_json::Value, Reply<u32>),
    CreateRun(Box<NewRun>, Planner, Reply<(CreateRunOutcome, Advanced)>),
    AdvanceRuns(Vec<RunId>, Planner, Reply<Advanced>),
    CancelRun(String, RunId, Planner, Reply<(Option<RunState>, Advanced)>),
    ReleaseRuns(Box<WorkspaceLimits>, Planner, Reply<Advanced>),
    ReleaseJobs(Box<WorkspaceLimits>, Reply<usize>),
    CreateToken(NewToken, Reply<TokenRecord>),
    RevokeToken(String, uuid::Uuid, Reply<bool>),
    SetShare(QueueShare, Reply<()>),
    Reopen(Reply<ReopenOutcome>),
    Close(Reply<()>),
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path).map_err(db)?,
        };
        // Every read runs in one read transaction, so a job and its events come from the
        // same snapshot even when the writer commits in between.
        let result = conn.prepare_cached("BEGIN").and_then(|mut s| s.execute([])).and_then(|_| f(&conn)).map_err(db);
        if conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// The SQLite store. See the module docs.
pub struct SqliteStore {
    tx: mpsc::Sender<Cmd>,
    readers: Arc<ReadPool>,
    wakeups: Arc<Wakeups>,
    parks: Arc<Parks>,
    path: PathBuf,
    _lock: std::fs::File,
    /// Fired after tokens changed (see [`Store::token_changes`]).
    token_changes: tokio::sync::broadcast::Sender<()>,
    /// Fired by the writer after a commit that wrote events (see [`Store::event_signal`]).
    events: Arc<EventSignal>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        db(e)
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A small cache: whenever the writer has committed since a reader's last read, SQLite
    // drops the reader's whole cache, and dropping a large one costs more than re-reading.
    conn.execute_batch("PRAGMA query_only = 1; PRAGMA cache_size = -2048;")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Folds the WAL back into the database file every [`CHECKPOINT_EVERY`], without waiting
/// for readers or the writer (a passive checkpoint), until the store's writer has stopped.
fn checkpoint(path: &Path, writer: &mpsc::WeakSender<Cmd>) {
    let conn =
        match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no checkpoint connection; the writer checkpoints by itself");
                return;
            }
        };
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if writer.upgrade().is_none_or(|tx| tx.is_closed()) {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(StoreError::Database(format!(
            "the database is at schema version {current}, newer than this Ferry knows ({latest})"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let script = format!("BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;");
        if let Err(e) = conn.execute_batch(&script) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(StoreError::Database(format!("migration {version} failed: {e}")));
        }
        tracing::info!(version, "applied SQLite migration");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `opts.data_dir`, applies migrations, takes
    /// the directory's lock and starts the writer thread.
    pub fn open(opts: &SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", opts.data_dir.display())))?;
        let lock_path = opts.data_dir.join("ferry.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| StoreError::Locked(opts.data_dir.display().to_string()))?;

        let path = opts.data_dir.join("ferry.db");
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
        let sync = match opts.durability {
            Durability::Process => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA cache_size = -{WRITER_CACHE_KIB}; \
             PRAGMA temp_store = MEMORY;"
        ))
        .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints run on a thread of their own (`checkpoint`), so the writer's commits
        // never wait for one (a checkpoint syncs the WAL and the database file: a
        // millisecond-scale stall in the middle of a submit's or claim's latency). The
        // writer checkpoints only if that thread falls far behind.
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};")).map_err(db)?;
        migrate(&conn)?;
        // We hold the directory's lock: whatever is still `running` was left by a process
        // that died. Expire those leases now so the reaper retries them at once.
        let orphans = conn.execute("UPDATE jobs SET lease_expires_at = 0 WHERE state = 'running'", []).map_err(db)?;
        if orphans > 0 {
            tracing::warn!(orphans, "found jobs left running by a previous process; they will be retried");
        }

        let wakeups = Arc::new(Wakeups::default());
        let (tx, rx) = mpsc::channel(8192);
        let writer_wakeups = wakeups.clone();
        let parks = Arc::new(Parks::default());
        let writer_parks = parks.clone();
        let events = Arc::new(EventSignal::default());
        let writer_events = events.clone();
        std::thread::Builder::new()
            .name("ferry-sqlite-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    woken: HashSet::new(),
                    now: 0,
                    poisoned: None,
                    rates: None,
                    parks: writer_parks,
                    touched: RefCell::default(),
                }
                .run(rx, &writer_wakeups, &writer_events)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        let (weak, checkpoint_path) = (tx.downgrade(), path.clone());
        std::thread::Builder::new()
            .name("ferry-sqlite-checkpoint".into())
            .spawn(move || checkpoint(&checkpoint_path, &weak))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            token_changes: tokio::sync::broadcast::channel(16).0,
            events,
            tx,
            readers: Arc::new(ReadPool { path: path.clone(), idle: Mutex::new(Vec::new()) }),
            wakeups,
            parks,
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// The writer thread's state for one group-commit transaction.
struct Writer {
    conn: Connection,
    /// Queues whose dispatchers should look again once this transaction commits.
    woken: HashSet<String>,
    /// The transaction's clock: one timestamp for everything it writes.
    now: Micros,
    /// A request of this group failed with a database error: roll the group back.
    poisoned: Option<String>,
    /// Every rate in force, as of the last read (`None`: read again before the next claim,
    /// after a change or a rolled-back group).
    rates: Option<Rates>,
    /// Claims waiting for work (see [`crate::park`]), run by the group that wakes their queue.
    parks: Arc<Parks>,
    /// The jobs and runs whose logs this transaction wrote: their event streams are
    /// woken once it commits.
    touched: RefCell<Vec<Subject>>,
}

type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>, wakeups: &Wakeups, events: &EventSignal) {
        let mut batch = Vec::with_capacity(64);
        let mut closing: Option<Reply<()>> = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            batch.push(first);
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.now = time::now_micros();
            // A group that cannot begin is poisoned from the start: no request runs.
            let began = self.conn.execute_batch("BEGIN IMMEDIATE");
            self.poisoned = began.as_ref().err().map(|e| format!("cannot begin a transaction: {e}"));
            let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
            for cmd in batch.drain(..) {
                match cmd {
                    Cmd::Close(reply) => closing = Some(reply),
                    cmd => answers.push(self.apply(cmd)),
                }
            }
            let parked = self.run_parked();
            let outcome = match self.poisoned.take() {
                None => self.conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
                Some(e) => Err(e),
            };
            if outcome.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.rates = None;
                tracing::error!(error = ?outcome, "SQLite group commit failed");
            }
            metrics::counter!("ferry_store_transactions_total").increment(1);
            metrics::counter!("ferry_store_requests_total").increment(answers.len() as u64);
            // The leased jobs first: their dispatchers start them while the requests are
            // answered.
            let answered: HashSet<String> = parked.iter().map(|(p, _)| p.req.queue.clone()).collect();
            for (park, claimed) in parked {
                park.deliver(if outcome.is_ok() { claimed } else { Claimed::default() });
            }
            for answer in answers {
                answer(outcome.as_ref().err().map(String::as_str));
            }
            let woken = std::mem::take(&mut self.woken);
            let touched = std::mem::take(self.touched.get_mut());
            if outcome.is_ok() {
                // After the commit, so that a woken stream finds the events.
                events.committed(touched);
                // The delivery is the wake-up of a queue whose parked claims ran.
                for queue in woken.iter().filter(|q| !answered.contains(*q)) {
                    wakeups.get(queue).notify_one();
                }
            }
        }
        // Make sure the WAL is folded back into the database file on a clean stop.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        if let Some(reply) = closing {
            let _ = reply.send(Ok(()));
        }
    }

    /// Runs, inside the group's transaction, the parked claims of the queues it woke and
    /// no rate applies to (see [`crate::park`]). A claim that fails poisons the group, as
    /// any request's would.
    fn run_parked(&mut self) -> Vec<(Park, Claimed)> {
        if self.poisoned.is_some() || !self.parks.waiting(&self.woken) {
            return Vec::new();
        }
        let rates = match self.rates.take() {
            Some(r) => r,
            None => match load_rates(&self.conn) {
                Ok(r) => r,
                Err(e) => {
                    self.poisoned = Some(e.to_string());
                    return Vec::new();
                }
            },
        };
        // As on PostgreSQL, a rated queue's dispatcher is woken and claims on its own.
        let parks = self.parks.take(&self.woken, |q| rates.applies_to(q));
        self.rates = Some(rates);
        let mut out = Vec::with_capacity(parks.len());
        for park in parks {
            let claimed = match &self.poisoned {
                Some(_) => Claimed::default(),
                None => self.claim(&park.req).unwrap_or_else(|e| {
                    self.poisoned = Some(e.to_string());
                    Claimed::default()
                }),
            };
            out.push((park, claimed));
        }
        out
    }

    /// Runs one request of the group and returns how to answer it once the transaction's
    /// fate is known.
    fn apply(&mut self, cmd: Cmd) -> Answer {
        match cmd {
            Cmd::Submit(jobs, admission, reply) => self.step(reply, |w| w.submit(jobs, admission)),
            Cmd::SetQueue(q, reply) => self.step(reply, |w| {
                w.conn
                    .prepare_cached(
                        "INSERT INTO queue_settings (name, concurrency, max_depth, rate, paused, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET \
                         concurrency = excluded.concurrency, max_depth = excluded.max_depth, rate = excluded.rate, \
                         paused = excluded.paused, updated_at = excluded.updated_at",
                    )?
                    .execute(params![q.name, q.concurrency, q.max_depth.map(|d| d as i64), q.rate, q.paused, w.now])?;
                w.rates = None;
                Ok(())
            }),
            Cmd::SetLabelRate(ws, label, rate, reply) => self.step(reply, |w| {
                let existed = w
                    .conn
                    .prepare_cached("DELETE FROM label_rates WHERE workspace = ?1 AND label = ?2")?
                    .execute(params![ws, label])?
                    > 0;
                if let Some(rate) = rate {
                    w.conn
                        .prepare_cached(
                            "INSERT INTO label_rates (workspace, label, rate, updated_at) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![ws, label, rate, w.now])?;
                }
                w.rates = None;
                Ok(existed)
            }),
            Cmd::SetLimits(ws, limits, reply) => self.step(reply, |w| {
                let text = serde_json::to_string(&limits).map_err(|e| StoreError::Database(e.to_string()))?;
                w.conn
                    .prepare_cached(
                        "INSERT INTO workspace_limits (workspace, limits, updated_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (workspace) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
                    )?
                    .execute(params![ws, text, w.now])?;
                Ok(())
            }),
            Cmd::Claim(req, reply) => self.step(reply, |w| w.claim(&req)),
            Cmd::FinishMany(fins, reply) => self.step(reply, |w| fins.iter().map(|f| w.finish(f)).collect()),
            Cmd::Heartbeat(worker, lease_ms, running, reply) => {
                self.step(reply, |w| w.heartbeat(&worker, lease_ms, &running))
            }
            Cmd::RegisterWorker(info, reply) => self.step(reply, |w| w.register_worker(&info)),
            Cmd::UnregisterWorker(id, reply) => self.step(reply, |w| {
                w.conn.prepare_cached("DELETE FROM workers WHERE id = ?1")?.execute(params![id])?;
                Ok(())
            }),
            Cmd::Prune(older_than_ms, limit, reply) => self.step(reply, |w| w.prune(older_than_ms, limit)),
            Cmd::Cancel(ws, id, reply) => self.step(reply, |w| w.cancel(&ws, id)),
            Cmd::Replay(ws, id, reply) => self.step(reply, |w| w.replay(&ws, id)),
            Cmd::Delete(ws, id, reply) => self.step(reply, |w| w.delete(&ws, id)),
            Cmd::PutWorkflow(ws, user, name, def, reply) => {
                self.step(reply, |w| w.put_workflow(&ws, &user, &name, &def))
            }
            Cmd::CreateRun(run, planner, reply) => {
                self.step(reply, |w| rules::ready(rules::runs::create(&mut w.tx(), *run, &planner)))
            }
            Cmd::AdvanceRuns(list, planner, reply) => self.step(reply, |w| {
                let mut all = Advanced::default();
                for id in &list {
                    all.merge(rules::ready(rules::runs::advance(&mut w.tx(), *id, &planner))?);
                }
                Ok(all)
            }),
            Cmd::CancelRun(ws, id, planner, reply) => {
                self.step(reply, |w| rules::ready(rules::runs::cancel(&mut w.tx(), &ws, id, &planner)))
            }
            Cmd::ReleaseRuns(defaults, planner, reply) => self.step(reply, |w| {
                let mut all = Advanced::default();
                for ws in w.workspaces_with_queued_runs()? {
                    all.merge(rules::ready(rules::runs::release_queued(&mut w.tx(), &ws, &defaults, &planner))?);
                }
                Ok(all)
            }),
            Cmd::ReleaseJobs(defaults, reply) => self.step(reply, |w| w.release_held(&defaults)),
            Cmd::CreateToken(t, reply) => self.step(reply, |w| {
                w.conn
                    .prepare_cached(
                        "INSERT INTO tokens (id, workspace, user_id, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![t.id, t.workspace, t.user, t.role.as_str(), t.hash, w.now])?;
                // From the first token on, the store stays closed (see `Store::auth_closed`).
                w.conn.prepare_cached("UPDATE auth_state SET closed = 1")?.execute([])?;
                Ok(TokenRecord {
                    id: t.id,
                    workspace: t.workspace,
                    user: t.user,
                    role: t.role,
                    created_at: w.now,
                    revoked_at: None,
                })
            }),
            Cmd::RevokeToken(ws, id, reply) => self.step(reply, |w| {
                let n = w
                    .conn
                    .prepare_cached(
                        "UPDATE tokens SET revoked_at = ?3 WHERE id = ?1 AND workspace = ?2 AND revoked_at IS NULL",
                    )?
                    .execute(params![id, ws, w.now])?;
                Ok(n == 1)
            }),
            Cmd::SetShare(share, reply) => self.step(reply, |w| {
                w.conn
                    .prepare_cached(
                        "INSERT INTO queue_shares (queue, workspace, paused, rate, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (queue, workspace) DO UPDATE SET \
                         paused = excluded.paused, rate = excluded.rate, updated_at = excluded.updated_at",
                    )?
                    .execute(params![share.queue, share.workspace, share.paused, share.rate, w.now])?;
                w.rates = None;
                if !share.paused {
                    // Resumed jobs are ready work: wake the queue (and run its parked claims).
                    w.woken.insert(share.queue.clone());
                }
                Ok(())
            }),
            Cmd::Reopen(reply) => self.step(reply, |w| {
                let active: i64 = w
                    .conn
                    .prepare_cached("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL")?
                    .query_row([], |r| r.get(0))?;
                if active > 0 {
                    return Ok(ReopenOutcome::TokensRemain(active as u64));
                }
                let n = w.conn.prepare_cached("UPDATE auth_state SET closed = 0 WHERE closed")?.execute([])?;
                Ok(if n == 1 { ReopenOutcome::Reopened } else { ReopenOutcome::AlreadyOpen })
            }),
            Cmd::Close(_) => unreachable!("handled by the loop"),
        }
    }

    fn step<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Answer {
        // No savepoint per request: SQLite copies every page a savepoint touches into a
        // sub-journal, which doubled the cost of a claim. Instead a request either fails
        // before it writes anything (an idempotency conflict is checked first), or its
        // failure is a database error that poisons the whole group, which is rolled back
        // and answered with that error. Once the group is poisoned, later requests do not
        // run at all: they would be rolled back anyway.
        let result = match &self.poisoned {
            Some(e) => Err(StoreError::Database(e.clone())),
            None => f(self),
        };
        if let Err(e) = &result
            && !matches!(
                e,
                StoreError::IdempotencyConflict { .. } | StoreError::LimitReached(_) | StoreError::QueueFull { .. }
            )
        {
            self.poisoned = Some(e.to_string());
        }
        Box::new(move |group_error| {
            let _ = reply.send(match group_error {
                Some(e) => Err(StoreError::Database(format!("transaction failed: {e}"))),
                None => result,
            });
        })
    }

    fn event(&self, job: JobId, kind: &str, data: serde_json::Value) -> rusqlite::Result<()> {
        self.conn.prepare_cached(INSERT_EVENT)?.execute(params![job, self.now, kind, data.to_string()])?;
        self.touched(Subject::Job(job));
        Ok(())
    }

    /// Notes that the transaction wrote to a job's or a run's log, if any stream watches.
    pub(super) fn touched(&self, subject: Subject) {
        self.touched.borrow_mut().push(subject);
    }

    fn submit(&mut self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        // First, read only: resolve every idempotency key, so that a conflict is refused
        // before anything of the batch is written, and only new jobs are counted.
        let resolved = submission::resolve(&jobs, |job, key| {
            let found: Option<(JobId, String, Option<String>)> = self
                .conn
                .prepare_cached(
                    "SELECT id, state, request_hash FROM jobs WHERE workspace = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![job.workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match found {
                Some((id, state, request_hash)) => Some(Stored { id, state: parse_enum(&state)?, request_hash }),
                None => None,
            })
        })?;
        // Still before any write: the jobs this batch adds must fit the limits.
        let mut hold = None;
        if !admission.is_unlimited()
            && let Some(first) = jobs.first()
        {
            let adding = submission::adding(&jobs, &resolved, None);
            let (user_now, workspace_now) = self.in_flight("jobs", &first.workspace, &first.user)?;
            if let Err(limit) = admission.check("job", user_now, workspace_now, adding) {
                if !admission.queue_on_limit {
                    return Err(limit.into());
                }
                hold = Some(limit.to_string());
            }
        }
        // Jobs that may wait never overtake the workspace's jobs already held.
        if hold.is_none()
            && admission.queue_on_limit
            && let Some(first) = jobs.first()
        {
            let held: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM jobs WHERE workspace = ?1 AND state = 'held'")?
                .query_row(params![first.workspace], |r| r.get(0))?;
            if held > 0 {
                hold = Some("jobs of the workspace are held".into());
            }
        }
        for (queue, cap) in &admission.queue_caps {
            let adding = submission::adding(&jobs, &resolved, Some(queue));
            if adding > 0 {
                submission::check_depth(queue, *cap, self.waiting(queue, *cap)?, adding)?;
            }
        }
        let mut inserted = HashMap::new();
        for (job, r) in jobs.iter().zip(&resolved) {
            if *r == Resolved::New {
                inserted.insert(job.id, self.insert_job(job, None, hold.as_deref())?);
            }
        }
        Ok(submission::answers(&jobs, &resolved, |id| inserted[&id]))
    }

    /// The workspace's own limits, else `defaults`.
    pub(super) fn limits_or(&self, workspace: &str, defaults: &WorkspaceLimits) -> Result<WorkspaceLimits, StoreError> {
        let stored: Option<String> = self
            .conn
            .prepare_cached("SELECT limits FROM workspace_limits WHERE workspace = ?1")?
            .query_row(params![workspace], |r| r.get(0))
            .optional()?;
        Ok(stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| defaults.clone()))
    }

    /// Queues held jobs that fit their limits now, oldest first per workspace (`defaults`:
    /// the limits of a workspace that set none). Returns how many were released.
    fn release_held(&mut self, defaults: &WorkspaceLimits) -> Result<usize, StoreError> {
        let workspaces: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT workspace FROM jobs WHERE state = 'held' LIMIT 100")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut released = 0;
        for ws in workspaces {
            let limits = self.limits_or(&ws, defaults)?;
            let held: Vec<(JobId, String, String, Micros)> = self
                .conn
                .prepare_cached(
                    "SELECT id, user_id, queue, run_at FROM jobs WHERE workspace = ?1 AND state = 'held' ORDER BY id LIMIT 1000",
                )?
                .query_map(params![ws], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, user, queue, run_at) in held {
                let (user_now, workspace_now) = self.in_flight("jobs", &ws, &user)?;
                match limits.jobs_for(&user).check("job", user_now, workspace_now, 1) {
                    Err(l) if l.scope == "workspace" => break,
                    Err(_) => continue,
                    Ok(()) => {}
                }
                let (state, at) =
                    if run_at > self.now { (JobState::Scheduled, run_at) } else { (JobState::Queued, self.now) };
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET state = ?2, run_at = ?3, updated_at = ?4 WHERE id = ?1 AND state = 'held'",
                    )?
                    .execute(params![id, state.as_str(), at, self.now])?;
                let (kind, data) = transition::submit_event(state, &queue, at);
                self.event(id, kind, data)?;
                self.woken.insert(queue);
                released += 1;
            }
        }
        Ok(released)
    }

    /// The queue's waiting jobs (queued, scheduled, retrying), counted up to `cap + 1` at
    /// most through the partial indexes of each state.
    fn waiting(&self, queue: &str, cap: u64) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'queued' LIMIT ?2)) \
                 + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1 \
                    AND state IN ('scheduled', 'retrying') LIMIT ?2))",
            )?
            .query_row(params![queue, cap.saturating_add(1) as i64], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// What `user` and their whole workspace have in flight: running runs (`table` =
    /// `runs`) or unfinished standalone jobs (`jobs`), counted through the partial indexes.
    fn in_flight(&self, table: &str, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        // One pass over the workspace's part of the index counts both.
        let sql = match table {
            "runs" => {
                "SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM runs WHERE workspace = ?1 AND state = 'running'"
            }
            _ => {
                "SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM jobs WHERE workspace = ?1 AND run_id IS NULL \
                 AND state IN ('queued', 'scheduled', 'running', 'retrying')"
            }
        };
        let (workspace_now, user_now): (i64, i64) =
            self.conn.prepare_cached(sql)?.query_row(params![workspace, user], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((user_now.max(0) as u64, workspace_now.max(0) as u64))
    }

    /// Inserts one new job (a node instance when `run` is given) with its first event.
    fn insert_job(
        &mut self,
        job: &NewJob,
        run: Option<(RunId, &str, Option<u32>)>,
        held: Option<&str>,
    ) -> Result<JobState, StoreError> {
        let (state, run_at) = match job.run_at {
            _ if held.is_some() => (JobState::Held, job.run_at.unwrap_or(self.now).max(self.now)),
            Some(at) if at > self.now => (JobState::Scheduled, at),
            _ => (JobState::Queued, self.now),
        };
        let deadline = job.total_timeout_ms.map(|t| run_at.saturating_add(time::ms(t)));
        let labels = (!job.labels.is_empty()).then(|| serde_json::to_string(&job.labels).unwrap_or_default());
        let backoff = serde_json::to_string(&job.backoff).unwrap_or_default();
        self.conn.prepare_cached(INSERT_JOB).map_err(db)?.execute(params![
            job.id,
            job.workspace,
            job.user,
            job.kind,
            job.queue,
            state.as_str(),
            job.priority,
            job.input.to_string(),
            labels,
            job.max_attempts,
            backoff,
            job.timeout_ms as i64,
            job.total_timeout_ms.map(|t| t as i64),
            job.idempotency_key,
            job.request_hash,
            self.now,
            run_at,
            deadline,
            job.soft_timeout_ms.map(|t| t as i64),
            job.cache_key,
            run.map(|r| r.0),
            run.map(|r| r.1),
            run.and_then(|r| r.2),
        ])?;
        if let Some(reason) = held {
            let (kind, data) = transition::held_event(&job.queue, reason);
            self.event(job.id, kind, data)?;
            return Ok(state);
        }
        let (kind, data) = transition::submit_event(state, &job.queue, run_at);
        self.event(job.id, kind, data)?;
        self.woken.insert(job.queue.clone());
        Ok(state)
    }

    fn claim(&mut self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let now = self.now;
        self.conn.prepare_cached(PROMOTE_DUE).map_err(db)?.execute(params![req.queue, now]).map_err(db)?;
        let rates = match self.rates.take() {
            Some(r) => r,
            None => load_rates(&self.conn)?,
        };
        let rated = rates.applies_to(&req.queue).then(|| self.claim_rated(req, &rates));
        self.rates = Some(rates);
        if let Some(claimed) = rated {
            return claimed;
        }
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let mut claimed = self
            .conn
            .prepare_cached(CLAIM)
            .map_err(db)?
            .query_map(params![req.queue, now, req.limit as i64, req.worker, lease_until], |r| {
                Ok((claimed_from_row(r, now)?, r.get::<_, i32>(15)?))
            })
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        claimed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.run_at.cmp(&b.0.run_at)).then(a.0.id.cmp(&b.0.id)));
        let mut out = Vec::with_capacity(claimed.len());
        for (mut job, _) in claimed {
            self.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}))?;
            job.worker = Some(req.worker.clone());
            out.push(job);
        }
        Ok(Claimed { jobs: out, rate_wait_ms: None })
    }

    /// A claim through the rate buckets (see [`crate::rate`]): the candidates in claim
    /// order, the buckets they draw on, the choice, then the chosen jobs leased and the
    /// buckets written back, all in the writer's transaction.
    fn claim_rated(&mut self, req: &ClaimRequest, rates: &Rates) -> Result<Claimed, StoreError> {
        let now = self.now;
        let candidates = self
            .conn
            .prepare_cached(
                "SELECT id, workspace, labels FROM jobs WHERE queue = ?1 AND state = 'queued' \
                 AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = ?1 AND paused) \
                 AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = ?1 AND paused) \
                 ORDER BY priority DESC, run_at, id LIMIT ?2",
            )?
            .query_map(params![req.queue, rates.window(&req.queue, req.limit) as i64], |r| {
                use row::Columns;
                Ok(rate::Candidate {
                    id: r.uuid(0)?,
                    workspace: r.text(1)?,
                    labels: r.opt_json(2)?.unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let needed = rates.buckets_for(&req.queue, &candidates);
        let mut buckets = HashMap::new();
        for (key, _) in &needed {
            let stored = self
                .conn
                .prepare_cached("SELECT tokens, refilled_at FROM rate_buckets WHERE bucket = ?1")?
                .query_row(params![key], |r| Ok(rate::Bucket { tokens: r.get(0)?, refilled_at: r.get(1)? }))
                .optional()?;
            if let Some(b) = stored {
                buckets.insert(key.clone(), b);
            }
        }
        let choice = rate::choose(rates, &req.queue, &candidates, req.limit, &needed, &mut buckets, now);
        for (key, b) in &buckets {
            self.conn
                .prepare_cached(
                    "INSERT INTO rate_buckets (bucket, tokens, refilled_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens, refilled_at = excluded.refilled_at",
                )?
                .execute(params![key, b.tokens, b.refilled_at])?;
        }
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let mut jobs = Vec::with_capacity(choice.chosen.len());
        for id in &choice.chosen {
            let mut job = self
                .conn
                .prepare_cached(CLAIM_ONE)?
                .query_row(params![id, now, req.worker, lease_until], |r| claimed_from_row(r, now))?;
            self.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}))?;
            job.worker = Some(req.worker.clone());
            jobs.push(job);
        }
        Ok(Claimed { jobs, rate_wait_ms: choice.wait_ms() })
    }

    fn finish(&mut self, fin: &Finish) -> Result<bool, StoreError> {
        let now = self.now;
        let cols = transition::finish_columns(&fin.result, now);
        let changed = self.conn.prepare_cached(FINISH)?.execute(params![
            fin.id,
            fin.attempt,
            cols.state.as_str(),
            cols.output.map(|o| o.to_string()),
            cols.error.map(|e| serde_json::to_string(e).unwrap_or_default()),
            cols.finished.then_some(now),
            cols.run_at,
            cols.base_inc,
            now
        ])?;
        if changed == 0 {
            return Ok(false);
        }
        for (kind, data) in transition::finish_events(fin, now) {
            self.event(fin.id, kind, data)?;
        }
        if matches!(fin.result, FinishResult::Retry { .. } | FinishResult::Released) {
            self.woken.insert(fin.queue.clone());
        }
        Ok(true)
    }

    fn heartbeat(&mut self, worker: &str, lease_ms: u64, running: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let until = self.now.saturating_add(time::ms(lease_ms));
        let mut held = Vec::with_capacity(running.len());
        for id in running {
            if self.conn.prepare_cached(HEARTBEAT)?.execute(params![id, worker, until])? == 1 {
                held.push(*id);
            }
        }
        self.conn
            .prepare_cached("UPDATE workers SET last_heartbeat = ?2, running = ?3 WHERE id = ?1")?
            .execute(params![worker, self.now, running.len() as i64])?;
        Ok(held)
    }

    fn register_worker(&mut self, w: &WorkerInfo) -> Result<(), StoreError> {
        let queues = serde_json::to_string(&w.queues).unwrap_or_default();
        self.conn
            .prepare_cached(
                "INSERT INTO workers (id, node, queues, started_at, last_heartbeat, running) \
                 VALUES (?1, ?2, ?3, ?4, ?4, 0) \
                 ON CONFLICT (id) DO UPDATE SET node = ?2, queues = ?3, last_heartbeat = ?4",
            )?
            .execute(params![w.id, w.node, queues, self.now])?;
        Ok(())
    }

    fn prune(&mut self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let cut = self.now.saturating_sub(time::ms(older_than_ms));
        let ids = self
            .conn
            .prepare_cached(PRUNE)?
            .query_map(params![crate::id_floor(cut / 1000), cut, limit as i64], |r| r.get::<_, JobId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for id in &ids {
            self.conn.prepare_cached("DELETE FROM events WHERE job_id = ?1")?.execute(params![id])?;
            self.conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute(params![id])?;
        }
        // Ended runs, with their nodes and logs, likewise (their dead jobs stay).
        let runs = self
            .conn
            .prepare_cached(
                "SELECT id FROM runs WHERE id < ?1 AND state != 'running' AND finished_at < ?2 ORDER BY id LIMIT ?3",
            )?
            .query_map(params![crate::id_floor(cut / 1000), cut, limit as i64], |r| r.get::<_, JobId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for id in &runs {
            for sql in [
                "DELETE FROM run_events WHERE run_id = ?1",
                "DELETE FROM run_nodes WHERE run_id = ?1",
                "DELETE FROM runs WHERE id = ?1",
            ] {
                self.conn.prepare_cached(sql)?.execute(params![id])?;
            }
        }
        let day_ago = self.now.saturating_sub(time::ms(86_400_000));
        self.conn.prepare_cached("DELETE FROM workers WHERE last_heartbeat < ?1")?.execute(params![day_ago])?;
        let idle = self.now.saturating_sub(rate::IDLE_BUCKET_US);
        self.conn.prepare_cached("DELETE FROM rate_buckets WHERE refilled_at < ?1")?.execute(params![idle])?;
        Ok(ids.len().max(runs.len()))
    }

    fn cancel(&mut self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
        let Some((state, attempt, queue, kind)) = self.state_of(workspace, id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        if state.is_final() {
            return Ok(CancelOutcome::AlreadyFinal(state));
        }
        let error = transition::cancel_error();
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = 'cancelled', error = ?3, finished_at = ?4, worker_id = NULL, \
                 lease_expires_at = NULL, updated_at = ?4 WHERE id = ?1 AND state = ?2",
            )?
            .execute(params![id, state.as_str(), serde_json::to_string(&error).unwrap_or_default(), self.now])?;
        let was_running = state == JobState::Running;
        let (event, data) = transition::cancel_event(state, attempt, &error);
        self.event(id, event, data)?;
        Ok(CancelOutcome::Cancelled { was_running, queue, kind })
    }

    fn replay(&mut self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
        let Some((state, ..)) = self.state_of(workspace, id)? else {
            return Ok(ReplayOutcome::NotFound);
        };
        if !matches!(state, JobState::Dead | JobState::Cancelled) {
            return Ok(ReplayOutcome::NotReplayable(state));
        }
        let queue: String = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', run_at = ?2, attempt_base = attempt, \
                 deadline_at = CASE WHEN total_timeout_ms IS NULL THEN NULL ELSE ?2 + total_timeout_ms * 1000 END, \
                 error = NULL, output = NULL, finished_at = NULL, updated_at = ?2 \
                 WHERE id = ?1 RETURNING queue",
            )
            .map_err(db)?
            .query_row(params![id, self.now], |r| r.get(0))
            .map_err(db)?;
        for (kind, data) in transition::replay_events(state, &queue) {
            self.event(id, kind, data)?;
        }
        self.woken.insert(queue);
        Ok(ReplayOutcome::Replayed)
    }

    fn delete(&mut self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
        let Some((state, ..)) = self.state_of(workspace, id)? else {
            return Ok(DeleteOutcome::NotFound);
        };
        if !state.is_final() {
            return Ok(DeleteOutcome::NotFinished(state));
        }
        self.conn.prepare_cached("DELETE FROM events WHERE job_id = ?1")?.execute(params![id])?;
        self.conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute(params![id])?;
        Ok(DeleteOutcome::Deleted)
    }

    /// A job's state, attempt number, queue and kind, if it exists in the workspace.
    fn state_of(&self, workspace: &str, id: JobId) -> Result<Option<(JobState, u32, String, String)>, StoreError> {
        let row: Option<(String, u32, String, String)> = self
            .conn
            .prepare_cached("SELECT state, attempt, queue, kind FROM jobs WHERE id = ?1 AND workspace = ?2")?
            .query_row(params![id, workspace], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        match row {
            None => Ok(None),
            Some((s, a, q, k)) => Ok(Some((parse_enum(&s)?, a, q, k))),
        }
    }
}

fn conversion(idx: usize, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.to_string().into())
}

fn parse_enum<T: FromStr<Err = String>>(s: &str) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| conversion(0, e))
}

impl row::Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn uuid(&self, i: usize) -> rusqlite::Result<JobId> {
        self.get(i)
    }
    fn opt_uuid(&self, i: usize) -> rusqlite::Result<Option<JobId>> {
        self.get(i)
    }
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn invalid(&self, i: usize, why: String) -> rusqlite::Error {
        conversion(i, why)
    }
}

/// Reads a row of [`CLAIMED_COLUMNS`] (the claim's RETURNING list has the same order).
/// Every rate in force: queues' and workspaces' label keys'.
fn load_rates(c: &Connection) -> Result<Rates, StoreError> {
    let mut rates = Rates::default();
    let mut q = c.prepare_cached("SELECT name, rate FROM queue_settings WHERE rate > 0")?;
    for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))? {
        let (name, rate) = row?;
        rates.queues.insert(name, rate);
    }
    let mut s = c.prepare_cached("SELECT queue, workspace, rate FROM queue_shares WHERE rate > 0")?;
    for row in s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))? {
        let (queue, ws, rate) = row?;
        rates.shares.entry(queue).or_default().insert(ws, rate);
    }
    let mut l = c.prepare_cached("SELECT workspace, label, rate FROM label_rates WHERE rate > 0")?;
    for row in l.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))? {
        let (ws, label, rate) = row?;
        rates.labels.entry(ws).or_default().insert(label, rate);
    }
    Ok(rates)
}

fn claimed_from_row(r: &Row<'_>, started_at: Micros) -> rusqlite::Result<ClaimedJob> {
    row::claimed(r, started_at)
}

fn read_events(c: &Connection, id: JobId) -> rusqlite::Result<Vec<Event>> {
    use row::Columns;
    c.prepare_cached("SELECT id, at, type, data FROM events WHERE job_id = ?1 ORDER BY id")?
        .query_map(params![id], |r| {
            Ok(Event { id: r.get(0)?, job_id: id, at: r.get(1)?, event_type: r.get(2)?, data: r.json(3)? })
        })?
        .collect()
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    row::job(r)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, StoreError> {
        self.write(|r| Cmd::Submit(jobs, Admission::default(), r)).await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Claimed, StoreError> {
        self.write(|r| Cmd::Claim(req, r)).await
    }

    async fn finish(&self, fin: Finish) -> Result<bool, StoreError> {
        Ok(self.finish_many(vec![fin]).await?.pop().unwrap_or(false))
    }

    async fn finish_many(&self, fins: Vec<Finish>) -> Result<Vec<bool>, StoreError> {
        self.write(|r| Cmd::FinishMany(fins, r)).await
    }

    async fn register_worker(&self, worker: WorkerInfo) -> Result<(), StoreError> {
        self.write(|r| Cmd::RegisterWorker(worker, r)).await
    }

    async fn heartbeat(&self, worker: &str, lease_ms: u64, running: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let worker = worker.to_string();
        let running = running.to_vec();
        self.write(|r| Cmd::Heartbeat(worker, lease_ms, running, r)).await
    }

    async fn unregister_worker(&self, worker: &str) -> Result<(), StoreError> {
        let worker = worker.to_string();
        self.write(|r| Cmd::UnregisterWorker(worker, r)).await
    }

    async fn workers(&self, seen_within_ms: u64) -> Result<Vec<WorkerInfo>, StoreError> {
        let since = time::now_micros().saturating_sub(time::ms(seen_within_ms));
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, node, queues, started_at, last_heartbeat, running FROM workers \
                 WHERE last_heartbeat >= ?1 ORDER BY id",
            )?
            .query_map(params![since], |r| {
                Ok(WorkerInfo {
                    id: r.get(0)?,
                    node: r.get(1)?,
                    queues: row::Columns::json(r, 2)?,
                    started_at: r.get(3)?,
                    last_heartbeat: r.get(4)?,
                    running: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect()
        })
        .await
    }

    async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.write(|r| Cmd::Prune(older_than_ms, limit, r)).await
    }

    async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = time::now_micros();
        self.read(move |c| {
            let sql = format!(
                "SELECT {CLAIMED_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at < ?1 \
                 ORDER BY lease_expires_at LIMIT ?2"
            );
            c.prepare_cached(&sql)?
                .query_map(params![now, limit as i64], |r| {
                    let mut job = claimed_from_row(r, 0)?;
                    job.worker = r.get(16)?;
                    Ok(job)
                })?
                .collect()
        })
        .await
    }

    async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::Cancel(ws, id, r)).await
    }

    async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::Delete(ws, id, r)).await
    }

    async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::Replay(ws, id, r)).await
    }

    async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND workspace = ?2");
            let Some(mut job) = c.prepare_cached(&sql)?.query_row(params![id, ws], job_from_row).optional()? else {
                return Ok(None);
            };
            job.attempts = crate::attempts_from_events(&read_events(c, id)?);
            Ok(Some(job))
        })
        .await
    }

    async fn cached_output(
        &self,
        workspace: &str,
        cache_key: &str,
        finished_since: Micros,
    ) -> Result<Option<(JobId, serde_json::Value)>, StoreError> {
        let (ws, key) = (workspace.to_string(), cache_key.to_string());
        self.read(move |c| {
            let row = c
                .prepare_cached(CACHED_OUTPUT)?
                .query_row(params![ws, key, finished_since], |r| Ok((r.get::<_, JobId>(0)?, r.get::<_, String>(1)?)))
                .optional()?;
            Ok(row.and_then(|(id, out)| Some((id, serde_json::from_str(&out).ok()?))))
        })
        .await
    }

    async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ?");
            let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(ws)];
            if let Some(state) = filter.state {
                sql.push_str(" AND state = ?");
                args.push(Box::new(state.as_str()));
            }
            if let Some(queue) = filter.queue {
                sql.push_str(" AND queue = ?");
                args.push(Box::new(queue));
            }
            if let Some(kind) = filter.kind {
                sql.push_str(" AND kind = ?");
                args.push(Box::new(kind));
            }
            if let Some(cursor) = filter.cursor {
                sql.push_str(" AND id < ?");
                args.push(Box::new(cursor));
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(Box::new(filter.limit as i64 + 1));
            let mut items = c
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), job_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let next_cursor = if items.len() > filter.limit {
                items.truncate(filter.limit);
                items.last().map(|j| j.id)
            } else {
                None
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let exists =
                c.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND workspace = ?2")?.exists(params![id, ws])?;
            if !exists {
                return Ok(None);
            }
            let events = read_events(c, id)?;
            Ok(Some(events))
        })
        .await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(QUEUE_STATS)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(row::queue_stats(rows))
        })
        .await
    }

    async fn workspace_queue_stats(&self, workspace: &str) -> Result<Vec<QueueStats>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(QUEUE_STATS_WORKSPACE)?;
            let rows = stmt
                .query_map(params![ws], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(row::queue_stats(rows))
        })
        .await
    }

    async fn put_workflow(
        &self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: serde_json::Value,
    ) -> Result<u32, StoreError> {
        let (ws, user, name) = (workspace.to_string(), user.to_string(), name.to_string());
        self.write(|r| Cmd::PutWorkflow(ws, user, name, definition, r)).await
    }

    async fn workflows(&self, workspace: &str) -> Result<Vec<WorkflowSummary>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| runs::workflows(c, &ws)).await
    }

    async fn workflow_versions(&self, workspace: &str, name: &str) -> Result<Vec<WorkflowVersion>, StoreError> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |c| runs::workflow_versions(c, &ws, &name)).await
    }

    async fn workflow_version(
        &self,
        workspace: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowVersion>, StoreError> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |c| runs::workflow_version(c, &ws, &name, version)).await
    }

    async fn create_run(&self, run: NewRun, planner: Planner) -> Result<(CreateRunOutcome, Advanced), StoreError> {
        self.write(|r| Cmd::CreateRun(Box::new(run), planner, r)).await
    }

    async fn advance_runs(&self, list: Vec<RunId>, planner: Planner) -> Result<Advanced, StoreError> {
        if list.is_empty() {
            return Ok(Advanced::default());
        }
        self.write(|r| Cmd::AdvanceRuns(list, planner, r)).await
    }

    async fn cancel_run(
        &self,
        workspace: &str,
        id: RunId,
        planner: Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::CancelRun(ws, id, planner, r)).await
    }

    async fn release_queued_runs(&self, defaults: WorkspaceLimits, planner: Planner) -> Result<Advanced, StoreError> {
        self.write(|r| Cmd::ReleaseRuns(Box::new(defaults), planner, r)).await
    }

    async fn release_held_jobs(&self, defaults: WorkspaceLimits) -> Result<usize, StoreError> {
        self.write(|r| Cmd::ReleaseJobs(Box::new(defaults), r)).await
    }

    async fn run_state(&self, workspace: &str, id: RunId) -> Result<Option<RunState>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let state: Option<String> = c
                .prepare_cached("SELECT state FROM runs WHERE id = ?1 AND workspace = ?2")?
                .query_row(params![id, ws], |r| r.get(0))
                .optional()?;
            state.map(|s| parse_enum(&s)).transpose()
        })
        .await
    }

    async fn get_run(&self, workspace: &str, id: RunId) -> Result<Option<RunDetail>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| runs::get_run(c, &ws, id)).await
    }

    async fn list_runs(&self, workspace: &str, filter: RunFilter) -> Result<RunPage, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| runs::list_runs(c, &ws, &filter)).await
    }

    async fn run_events(
        &self,
        workspace: &str,
        id: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<RunEvent>>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| runs::run_events(c, &ws, id, after, limit)).await
    }

    async fn runs_to_sweep(&self, idle_ms: u64, limit: usize) -> Result<Vec<RunId>, StoreError> {
        let now = time::now_micros();
        let idle_since = now.saturating_sub(time::ms(idle_ms));
        self.read(move |c| runs::runs_to_sweep(c, now, idle_since, limit)).await
    }

    async fn submit_admitted(&self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|r| Cmd::Submit(jobs, admission, r)).await
    }

    async fn workspace_limits(&self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            use row::Columns;
            c.prepare_cached("SELECT limits FROM workspace_limits WHERE workspace = ?1")?
                .query_row(params![ws], |r| r.json(0))
                .optional()
        })
        .await
    }

    async fn set_workspace_limits(&self, workspace: &str, limits: WorkspaceLimits) -> Result<(), StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::SetLimits(ws, limits, r)).await
    }

    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT name, concurrency, max_depth, rate, paused FROM queue_settings ORDER BY name")?
                .query_map([], |r| {
                    Ok(QueueSettings {
                        name: r.get(0)?,
                        concurrency: r.get(1)?,
                        max_depth: r.get::<_, Option<i64>>(2)?.map(|d| d.max(0) as u64),
                        rate: r.get(3)?,
                        paused: r.get(4)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn set_queue_settings(&self, settings: QueueSettings) -> Result<(), StoreError> {
        self.write(|r| Cmd::SetQueue(settings, r)).await
    }

    async fn queue_shares(&self, workspace: &str) -> Result<Vec<QueueShare>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT queue, workspace, paused, rate FROM queue_shares WHERE workspace = ?1 ORDER BY queue",
            )?
            .query_map(params![ws], |r| {
                Ok(QueueShare { queue: r.get(0)?, workspace: r.get(1)?, paused: r.get(2)?, rate: r.get(3)? })
            })?
            .collect()
        })
        .await
    }

    async fn set_queue_share(&self, share: QueueShare) -> Result<(), StoreError> {
        self.write(|r| Cmd::SetShare(share, r)).await
    }

    async fn label_rates(&self, workspace: &str) -> Result<Vec<LabelRate>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT label, rate FROM label_rates WHERE workspace = ?1 ORDER BY label")?
                .query_map(params![ws], |r| Ok(LabelRate { label: r.get(0)?, rate: r.get(1)? }))?
                .collect()
        })
        .await
    }

    async fn set_label_rate(&self, workspace: &str, label: &str, rate: Option<f64>) -> Result<bool, StoreError> {
        self.write(|r| Cmd::SetLabelRate(workspace.to_string(), label.to_string(), rate, r)).await
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let created = self.write(|r| Cmd::CreateToken(token, r)).await?;
        let _ = self.token_changes.send(());
        Ok(created)
    }

    fn token_changes(&self) -> Option<tokio::sync::broadcast::Receiver<()>> {
        Some(self.token_changes.subscribe())
    }

    async fn tokens(&self, workspace: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE workspace = ?1 ORDER BY created_at, id");
            c.prepare_cached(&sql)?.query_map(params![ws], |r| crate::tokens::token_row(r))?.collect()
        })
        .await
    }

    async fn revoke_token(&self, workspace: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        let ws = workspace.to_string();
        let revoked = self.write(|r| Cmd::RevokeToken(ws, id, r)).await?;
        let _ = self.token_changes.send(());
        Ok(revoked)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let hash = hash.to_string();
        self.read(move |c| {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL");
            c.prepare_cached(&sql)?.query_row(params![hash], |r| crate::tokens::token_row(r)).optional()
        })
        .await
    }

    async fn active_tokens(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL")?
                .query_row([], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    async fn auth_closed(&self) -> Result<bool, StoreError> {
        self.read(|c| c.prepare_cached(AUTH_CLOSED)?.query_row([], |r| r.get(0))).await
    }

    async fn reopen(&self) -> Result<ReopenOutcome, StoreError> {
        let outcome = self.write(Cmd::Reopen).await?;
        let _ = self.token_changes.send(());
        Ok(outcome)
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Micros>, StoreError> {
        let queue = queue.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT min(run_at) FROM jobs WHERE queue = ?1 AND state IN ('scheduled', 'retrying')")?
                .query_row(params![queue], |r| r.get(0))
        })
        .await
    }

    fn wakeup(&self, queue: &str) -> Arc<Notify> {
        self.wakeups.get(queue)
    }

    fn event_signal(&self) -> Arc<EventSignal> {
        self.events.clone()
    }

    fn park(&self, req: ClaimRequest) -> Option<Parked> {
        Some(self.parks.park(req))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn close(&self) {
        let _ = self.write(Cmd::Close).await;
    }
}

#[cfg(test)]
mod tests {
    //! Pins what is SQLite's own: the claim, promotion, reaper and count queries stay on
    //! their indexes. The behaviour both backends share is pinned by
    //! `tests/conformance.rs`.

    use super::*;

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(&SqliteOptions { data_dir: dir.to_path_buf(), durability: Durability::Process }).unwrap()
    }

    fn plan(conn: &Connection, sql: &str, n: usize) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        let mut stmt = conn.prepare(&sql).unwrap();
        let params: Vec<rusqlite::types::Value> = (0..n).map(|_| rusqlite::types::Value::Integer(1)).collect();
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn claim_and_count_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let conn = Connection::open(store.path()).unwrap();
        let claim = plan(&conn, CLAIM, 5);
        assert!(claim.contains("jobs_ready"), "claim plan: {claim}");
        assert!(!claim.contains("SCAN jobs\n") && !claim.ends_with("SCAN jobs"), "claim plan scans the table: {claim}");
        // The pauses' subqueries leave the claim in index order: no sort of the backlog.
        assert!(!claim.contains("TEMP B-TREE FOR ORDER BY"), "claim plan sorts: {claim}");
        let promote = plan(&conn, PROMOTE_DUE, 2);
        assert!(promote.contains("jobs_due"), "promote plan: {promote}");
        let expired = plan(
            &conn,
            &format!(
                "SELECT {CLAIMED_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY lease_expires_at LIMIT ?2"
            ),
            2,
        );
        assert!(expired.contains("jobs_lease"), "reaper plan: {expired}");
        let stats = plan(&conn, QUEUE_STATS, 0);
        for index in ["jobs_ready", "jobs_lease", "jobs_due", "jobs_dead"] {
            assert!(stats.contains(index), "stats plan does not use {index}: {stats}");
        }
        assert!(!stats.lines().any(|l| l.trim() == "SCAN jobs"), "stats plan scans the table: {stats}");
    }
}
