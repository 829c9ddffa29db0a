//! The SQLite backend: one file in the data directory, in WAL mode, with group commit.
//!
//! SQLite allows one writer at a time, so the backend embraces it: a single writer
//! thread owns the write connection and serves every write request (submits, claims,
//! finishes, heartbeats, cancels) from a channel. Whatever has queued up while the last
//! transaction committed goes into the next one. A request refused by a rule (an
//! idempotency conflict, a limit) is refused before it writes anything, so it does not
//! undo its neighbours; a database error rolls the whole group back (`Writer::step`). A
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
mod admission;
mod batch;
/// The raw baseline `ferry bench` shows beside its end-to-end figure: not part of the
/// store's API (hidden from its docs), a child module so it runs the writer's own code.
#[doc(hidden)]
pub mod bench;
mod blobs;
pub use blobs::blob_dir;
mod breakers;
mod claim;
mod escalations;
mod failures;
mod jobs;
mod log;
mod open;
mod remote;
mod rows;
mod runs;
mod schedules;
mod tx;
mod writer;
use open::*;
use rows::*;
use writer::*;

use crate::park::{Park, Parks};
use crate::rate::{self, Rates};
use crate::rules;
use crate::runs::{
    Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunPage, RunRow, WorkflowSummary,
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

const PRUNE: &str = include_str!("../sql/sqlite/prune.sql");
const INSERT_JOB: &str = include_str!("../sql/sqlite/insert_job.sql");
const PROMOTE_DUE: &str = include_str!("../sql/sqlite/promote_due.sql");
const CLAIM: &str = include_str!("../sql/sqlite/claim.sql");
const CLAIM_ONE: &str = include_str!("../sql/sqlite/claim_one.sql");
const FINISH: &str = include_str!("../sql/sqlite/finish.sql");
const HEARTBEAT: &str = include_str!("../sql/sqlite/heartbeat.sql");
const QUEUE_STATS: &str = include_str!("../sql/sqlite/queue_stats.sql");
const QUEUE_STATS_WORKSPACE: &str = include_str!("../sql/sqlite/queue_stats_workspace.sql");
crate::sql::statements!("../sql/sqlite/store.sql":
    WRITER_PRAGMAS, WRITER_AUTOCHECKPOINT, EXPIRE_ORPHANS, BEGIN_READ, COMMIT, ROLLBACK, INSERT_EVENTS, WORKERS, EXPIRED, GET_JOB, CACHED_OUTPUT, LIST_JOBS, JOB_EXISTS, RUN_STATE, WORKSPACE_LIMITS, QUEUE_SETTINGS,
    QUEUE_SHARES, LABEL_RATES, TOKENS, TOKEN_BY_HASH, ACTIVE_TOKENS, AUTH_CLOSED, NEXT_DUE, PING,
);
/// A claimed job's columns, in the order [`row::claimed`] reads them (the claim's
/// RETURNING list has the same order); put in `EXPIRED`, and in the reaper's plan test.
const CLAIMED_COLUMNS: &str = "id, kind, queue, input, attempt, attempt_base, max_attempts, backoff, \
     timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, breaker, ordering_key, user_id, worker_id, lease_expires_at";

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
    Breaker(String, crate::BreakerOp, Reply<crate::BreakerOutcome>),
    OrderRelease(String, String, Reply<Option<JobId>>),
    Escalate(Box<crate::Firing>, Reply<Option<crate::Fired>>),
    /// Any request of its own (`schedules.rs`): it answers through `Writer::step` itself.
    With(Box<dyn FnOnce(&mut Writer) -> Answer + Send>),
    Close(Reply<()>),
}

/// The SQLite store. See the module docs.
pub struct SqliteStore {
    tx: mpsc::Sender<Cmd>,
    readers: Arc<ReadPool>,
    wakeups: Arc<Wakeups>,
    parks: Arc<Parks>,
    path: PathBuf,
    blobs: Arc<blobs::FileBlobs>,
    /// The data directory's lock: held from the open until [`Store::close`] has stopped
    /// the writer, or the store is dropped.
    lock: std::fs::File,
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
        // Settings are put in here: a PRAGMA takes no parameters.
        let pragmas = WRITER_PRAGMAS.replace("{sync}", sync).replace("{cache_kib}", &WRITER_CACHE_KIB.to_string());
        conn.execute_batch(&pragmas).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints run on a thread of their own (`checkpoint`), so the writer's commits
        // never wait for one (a checkpoint syncs the WAL and the database file: a
        // millisecond-scale stall in the middle of a submit's or claim's latency). The
        // writer checkpoints only if that thread falls far behind.
        let autocheckpoint = WRITER_AUTOCHECKPOINT.replace("{pages}", &WRITER_AUTOCHECKPOINT_PAGES.to_string());
        conn.execute_batch(&autocheckpoint).map_err(db)?;
        migrate(&conn)?;
        // We hold the directory's lock: whatever is still `running` was left by a process
        // that died. Expire those leases now so the reaper retries them at once.
        let orphans = conn.execute(*EXPIRE_ORPHANS, []).map_err(db)?;
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
                    noted: RefCell::default(),
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
            blobs: Arc::new(blobs::FileBlobs::new(&opts.data_dir)),
            lock,
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
        self.read(move |c| c.prepare_cached(*WORKERS)?.query_map(params![since], |r| row::worker(r))?.collect()).await
    }

    async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.write(|r| Cmd::Prune(older_than_ms, limit, r)).await
    }

    async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = time::now_micros();
        self.read(move |c| {
            // The column list is put in here: the reaper's plan test reads it too.
            let sql = EXPIRED.replace("{CLAIMED_COLUMNS}", CLAIMED_COLUMNS);
            c.prepare_cached(&sql)?
                .query_map(params![now, limit as i64], |r| {
                    let mut job = claimed_from_row(r, 0)?;
                    job.worker = r.get(19)?;
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
            // The column list is put in here: `LIST_JOBS` reads the same.
            let sql = *GET_JOB;
            let Some(mut job) = c.prepare_cached(sql)?.query_row(params![id, ws], job_from_row).optional()? else {
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
                .prepare_cached(*CACHED_OUTPUT)?
                .query_row(params![ws, key, finished_since], |r| Ok((r.get::<_, JobId>(0)?, r.get::<_, String>(1)?)))
                .optional()?;
            Ok(row.and_then(|(id, out)| Some((id, serde_json::from_str(&out).ok()?))))
        })
        .await
    }

    async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            // Assembled here: each filter given adds a condition and its parameter.
            let mut filters = String::new();
            let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(ws)];
            if let Some(state) = filter.state {
                filters.push_str(" AND state = ?");
                args.push(Box::new(state.as_str()));
            }
            if let Some(queue) = filter.queue {
                filters.push_str(" AND queue = ?");
                args.push(Box::new(queue));
            }
            if let Some(kind) = filter.kind {
                filters.push_str(" AND kind = ?");
                args.push(Box::new(kind));
            }
            if let Some(cursor) = filter.cursor {
                filters.push_str(" AND id < ?");
                args.push(Box::new(cursor));
            }
            args.push(Box::new(filter.limit as i64 + 1));
            let sql = LIST_JOBS.replace("{filters}", &filters);
            let items = c
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), job_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (items, next_cursor) = crate::one_page(items, filter.limit, |j| j.id);
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn failures(
        &self,
        workspace: &str,
        filter: crate::FailureFilter,
    ) -> Result<Vec<crate::FailureRow>, StoreError> {
        self.read_failures(workspace, filter).await
    }

    async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| {
            let exists = c.prepare_cached(*JOB_EXISTS)?.exists(params![id, ws])?;
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
            let state: Option<String> =
                c.prepare_cached(*RUN_STATE)?.query_row(params![id, ws], |r| r.get(0)).optional()?;
            state.map(|s| parse_enum(&s)).transpose()
        })
        .await
    }

    async fn run(&self, workspace: &str, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| runs::run(c, &ws, id)).await
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
            c.prepare_cached(*WORKSPACE_LIMITS)?.query_row(params![ws], |r| r.json(0)).optional()
        })
        .await
    }

    async fn tokens_today(&self, workspace: &str) -> Result<u64, StoreError> {
        let (ws, day) = (workspace.to_string(), ferry_core::agent::Budget::day(time::now_micros()));
        let n: i64 =
            self.read(move |c| c.prepare_cached(*runs::TOKENS_USED)?.query_row(params![ws, day], |r| r.get(0))).await?;
        Ok(n.max(0) as u64)
    }

    async fn set_workspace_limits(&self, workspace: &str, limits: WorkspaceLimits) -> Result<(), StoreError> {
        let ws = workspace.to_string();
        self.write(|r| Cmd::SetLimits(ws, limits, r)).await
    }

    async fn breaker(&self, key: &str, op: crate::BreakerOp) -> Result<crate::BreakerOutcome, StoreError> {
        self.apply_breaker(key, op).await
    }

    async fn breakers(&self, key: Option<&str>) -> Result<Vec<crate::BreakerRecord>, StoreError> {
        self.read_breakers(key).await
    }

    async fn order_ahead(
        &self,
        workspace: &str,
        key: &str,
        id: JobId,
    ) -> Result<Option<crate::OrderAhead>, StoreError> {
        self.read_order_ahead(workspace, key, id).await
    }

    async fn order_release(&self, workspace: &str, key: &str) -> Result<Option<JobId>, StoreError> {
        self.write(|r| Cmd::OrderRelease(workspace.to_string(), key.to_string(), r)).await
    }

    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        self.read(|c| {
            c.prepare_cached(*QUEUE_SETTINGS)?
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
            c.prepare_cached(*QUEUE_SHARES)?
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
            c.prepare_cached(*LABEL_RATES)?
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
            // The column list is put in here: both backends read tokens with `TOKEN_COLUMNS`.
            let sql = TOKENS.replace("{TOKEN_COLUMNS}", TOKEN_COLUMNS);
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
            // The column list is put in here, as in `tokens`.
            let sql = TOKEN_BY_HASH.replace("{TOKEN_COLUMNS}", TOKEN_COLUMNS);
            c.prepare_cached(&sql)?.query_row(params![hash], |r| crate::tokens::token_row(r)).optional()
        })
        .await
    }

    async fn active_tokens(&self) -> Result<u64, StoreError> {
        self.read(|c| c.prepare_cached(*ACTIVE_TOKENS)?.query_row([], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n.max(0) as u64)
    }

    async fn auth_closed(&self) -> Result<bool, StoreError> {
        self.read(|c| c.prepare_cached(*AUTH_CLOSED)?.query_row([], |r| r.get(0))).await
    }

    async fn reopen(&self) -> Result<ReopenOutcome, StoreError> {
        let outcome = self.write(Cmd::Reopen).await?;
        let _ = self.token_changes.send(());
        Ok(outcome)
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Micros>, StoreError> {
        let queue = queue.to_string();
        self.read(move |c| c.prepare_cached(*NEXT_DUE)?.query_row(params![queue], |r| r.get(0))).await
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

    fn blobs(&self) -> Arc<dyn crate::BlobBackend> {
        self.blobs.clone()
    }

    async fn escalation_signals(&self, read: crate::SignalRead) -> Result<crate::Signals, StoreError> {
        self.read_signals(read).await
    }

    async fn escalate(&self, firing: crate::Firing) -> Result<Option<crate::Fired>, StoreError> {
        self.fire(firing).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row(*PING, [], |_| Ok(()))).await
    }

    async fn close(&self) {
        let _ = self.write(Cmd::Close).await;
        // The writer has stopped: nothing of this store writes again, so another store may
        // open the directory now, whatever still holds this one (a task that has yet to
        // notice the stop). A restart in the same process no longer waits for them.
        let _ = self.lock.unlock();
    }
}

#[cfg(test)]
mod tests;
