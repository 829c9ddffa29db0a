//! The PostgreSQL backend: many API nodes and worker processes on one database.
//!
//! Where SQLite has one writer thread, PostgreSQL has many concurrent transactions, from
//! many processes. The backend leans on what PostgreSQL offers for that:
//!
//! - **Claims** lock the rows they take with `FOR UPDATE SKIP LOCKED`, so concurrent
//!   claimers on any node never get the same job and never wait for each other.
//! - **Batches**: submits, claims, finishes and their events are each one statement over
//!   parallel arrays (`UNNEST`), one round trip per batch rather than per job.
//! - **Wake-ups** travel by `LISTEN/NOTIFY`: a transaction that makes work ready sends one
//!   `pg_notify` per queue it touched (never one per row: `NOTIFY` takes a global lock at
//!   commit). Each process listens on one connection and wakes its dispatchers. When that
//!   connection drops, every queue is woken (notifications may have been missed) and it
//!   reconnects by itself; dispatchers also poll slowly as a safety net.
//! - **Event streams** are woken through the same listener, but not from inside the
//!   transactions: after a commit that wrote to job or run logs, this process wakes its own
//!   streams and a task sends one notification per few milliseconds naming the subjects
//!   (or `*` when they are many), so claims and finishes never take `NOTIFY`'s commit lock
//!   for them (see `postgres/events.rs`).
//! - **Time** comes from the database (`ferry_now()`), so leases and due times do not
//!   depend on nodes' clocks agreeing.
//! - **Migrations** run under an advisory lock, so nodes starting together apply each
//!   migration once.
//!
//! When the database is unreachable, calls fail with [`StoreError::Unavailable`]; the
//! pool reconnects by itself once it is back, so nodes resume without a restart.
//!
//! A `schema` option places every table in its own schema (created if missing) and scopes
//! the notification channel to it: tests use one schema each, so they run in parallel on
//! one database.

use crate::{
    CancelOutcome, ClaimRequest, Claimed, ClaimedJob, DeleteOutcome, Event, EventSignal, Finish, JobFilter, JobRecord,
    LabelRate, Page, Parked, QueueStats, ReplayOutcome, Store, StoreError, Subject, Submitted, Wakeups, WorkerInfo,
};
mod admission;
mod blobs;
mod breakers;
mod claim;
mod due;
mod escalations;
mod events;
mod failures;
mod head;
mod jobs;
mod leases;
mod listen;
mod migrate;
mod remote;
mod rows;
mod runs;
mod schedules;
mod settings;
mod tx;
use admission::*;
use claim::*;
use listen::*;
pub use migrate::warm;
use migrate::*;
use rows::*;

use crate::park::Parks;
use crate::rate::{self, Rates};
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
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../sql/postgres/migrations/0001_jobs.sql")),
    (2, include_str!("../sql/postgres/migrations/0002_rfc3339.sql")),
    (3, include_str!("../sql/postgres/migrations/0003_exec.sql")),
    (4, include_str!("../sql/postgres/migrations/0004_workflows.sql")),
    (5, include_str!("../sql/postgres/migrations/0005_tokens.sql")),
    (6, include_str!("../sql/postgres/migrations/0006_admission.sql")),
    (7, include_str!("../sql/postgres/migrations/0007_queue_settings.sql")),
    (8, include_str!("../sql/postgres/migrations/0008_rates.sql")),
    (9, include_str!("../sql/postgres/migrations/0009_tenancy.sql")),
    (10, include_str!("../sql/postgres/migrations/0010_share_rate.sql")),
    (11, include_str!("../sql/postgres/migrations/0011_breakers.sql")),
    (12, include_str!("../sql/postgres/migrations/0012_failures.sql")),
    (13, include_str!("../sql/postgres/migrations/0013_blobs.sql")),
    (14, include_str!("../sql/postgres/migrations/0014_escalations.sql")),
    (15, include_str!("../sql/postgres/migrations/0015_ordering.sql")),
    (16, include_str!("../sql/postgres/migrations/0016_agents.sql")),
    (17, include_str!("../sql/postgres/migrations/0017_run_depth.sql")),
    (18, include_str!("../sql/postgres/migrations/0018_remote_kinds.sql")),
    (19, include_str!("../sql/postgres/migrations/0019_schedules.sql")),
];
const INSERT_JOBS: &str = include_str!("../sql/postgres/insert_jobs.sql");
const INSERT_EVENTS: &str = include_str!("../sql/postgres/insert_events.sql");
/// A submission's one statement: `insert_jobs.sql` as the CTE `ins`, completed by
/// `submit_tail.sql` (the jobs' first events and the wake-ups).
static SUBMIT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let at = INSERT_JOBS.find("INSERT INTO jobs").expect("insert_jobs.sql inserts into jobs");
    let (head, body) = INSERT_JOBS.split_at(at);
    format!("{},\nins AS (\n{body}\n{}", head.trim_end(), include_str!("../sql/postgres/submit_tail.sql"))
});
const PROMOTE_DUE: &str = include_str!("../sql/postgres/promote_due.sql");
const CLAIM_SQL: &str = include_str!("../sql/postgres/claim.sql");
/// `claim.sql`'s text, from a deep queue's head or not (`after`), on its own (its commit
/// does not wait for the disk) or inside another transaction (`alone`).
fn claim_sql(after: bool, alone: bool) -> String {
    let after = if after { "AND priority = $5 AND (run_at, id) > ($6, $7)" } else { "" };
    let commit = if alone { ", set_config('synchronous_commit', 'off', true)" } else { "" };
    CLAIM_SQL.replace("{after}", after).replace("{commit}", commit)
}
/// `claim.sql` over the whole queue, inside a submission.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| claim_sql(false, false));
/// `claim.sql` on its own, over the whole queue.
static CLAIM_ALONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| claim_sql(false, true));
/// `claim.sql` on its own from a deep queue's head (see `postgres/head.rs`).
static CLAIM_AFTER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| claim_sql(true, true));
const CLAIM_IDS: &str = include_str!("../sql/postgres/claim_ids.sql");
/// How long a process reuses the rates it read (see [`crate::rate`]): a change made
/// elsewhere applies here within this time, and the one made here at once.
const RATES_FRESH_FOR: Duration = Duration::from_secs(1);
/// A pooled connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
const FINISH: &str = include_str!("../sql/postgres/finish.sql");
const HEARTBEAT: &str = include_str!("../sql/postgres/heartbeat.sql");
const PRUNE: &str = include_str!("../sql/postgres/prune.sql");
const QUEUE_STATS: &str = include_str!("../sql/postgres/queue_stats.sql");
const QUEUE_STATS_WORKSPACE: &str = include_str!("../sql/postgres/queue_stats_workspace.sql");
crate::sql::statements!("../sql/postgres/store.sql":
    LOCK_SCHEMA, CREATE_SCHEMA, UNLOCK_SCHEMA, NOTIFY, CLOCK, RUN_STATE, WORKSPACE_LIMITS, NEXT_DUE, PING, SNAPSHOT_READ,
);

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// A schema to hold Ferry's tables instead of the connection's default.
    pub schema: Option<String>,
    /// Connections in this process's pool.
    pub max_connections: u32,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
}

/// The PostgreSQL store. See the module docs.
pub struct PgStore {
    pool: PgPool,
    wakeups: Arc<Wakeups>,
    channel: String,
    cancel_channel: String,
    cancelled: broadcast::Sender<JobId>,
    token_channel: String,
    token_changes: broadcast::Sender<()>,
    listener: JoinHandle<()>,
    /// Every rate in force, and when it was read.
    rates: RatesCache,
    /// This process's claims waiting for work (see [`crate::park`]).
    parks: Arc<Parks>,
    /// When each queue's next scheduled or retrying job is due, as far as this process knows.
    due: due::DueTimes,
    /// Where each deep queue's waiting jobs begin, as far as this process knows.
    heads: Arc<head::Heads>,
    /// Marks this store's own wake-ups, which its listener skips (see `submit_tail.sql`).
    origin: String,
    /// Fired after this process's commits that wrote events and on other processes'
    /// notifications (see [`Store::event_signal`]).
    events: Arc<EventSignal>,
    /// What this process's commits tell other processes' event streams, sent by a task
    /// apart from the transactions (see `postgres/events.rs`).
    outbox: Arc<events::Outbox>,
    teller: JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.teller.abort();
    }
}

fn err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        // A connection killed by the server (restart, pg_terminate_backend) reports
        // itself as a database error of class 57 (operator intervention) or 08.
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        err(e)
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty() && s.len() <= 48 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PgStore {
    /// Connects, creates the schema if asked for one, applies migrations under an advisory
    /// lock, then opens the pool and starts listening for wake-ups.
    pub async fn open(opts: &PgOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(&opts.url)
            .map_err(|e| StoreError::Unavailable(format!("bad database URL: {e}")))?
            .application_name(&opts.application_name);
        let schema = opts.schema.clone().unwrap_or_else(|| "public".into());
        if let Some(s) = &opts.schema {
            if !valid_schema(s) {
                return Err(StoreError::Database(format!(
                    "schema `{s}` must be 1 to 48 lowercase letters, digits or `_`"
                )));
            }
            // CREATE SCHEMA IF NOT EXISTS is not safe when two sessions run it at once (one
            // fails on a unique index), so nodes starting together take turns.
            let pool = PgPoolOptions::new().max_connections(1).connect_with(connect.clone()).await?;
            let mut conn = pool.acquire().await?;
            sqlx::query(*LOCK_SCHEMA).bind(s).execute(&mut *conn).await?;
            // Put in here, as an identifier cannot be a parameter; `s` was checked by
            // valid_schema: lowercase letters, digits and `_` only.
            let create = CREATE_SCHEMA.replace("{schema}", s);
            let created = sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *conn).await;
            let _ = sqlx::query(*UNLOCK_SCHEMA).bind(s).execute(&mut *conn).await;
            created?;
            drop(conn);
            pool.close().await;
            connect = connect.options([("search_path", s.as_str())]);
        }
        // Migrations first, on a connection of their own: the pool below prepares and runs
        // its statements on every connection it opens (`warm`), and they need the schema.
        let migrating = PgPoolOptions::new().max_connections(1).connect_with(connect.clone()).await?;
        let migrated = migrate(&migrating).await;
        migrating.close().await;
        migrated?;
        // sqlx pings every connection it hands out, a round trip before each query on
        // the hottest paths (submit, claim, finish). Only a connection idle for a while
        // is pinged here; one that broke in use fails its query, is dropped by the ping
        // sqlx makes when it comes back, and its caller retries.
        let channel = format!("ferry_wakeup_{schema}");
        let warm_channel = channel.clone();
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                let channel = warm_channel.clone();
                Box::pin(async move {
                    if let Err(e) = warm(conn, &channel).await {
                        tracing::debug!(error = %e, "a new connection was not warmed");
                    }
                    Ok(())
                })
            })
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect)
            .await?;
        let wakeups = Arc::new(Wakeups::default());
        let cancel_channel = format!("ferry_cancel_{schema}");
        let token_channel = format!("ferry_tokens_{schema}");
        let (cancelled, _) = broadcast::channel(1024);
        let (token_changes, _) = broadcast::channel(16);
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let events_channel = format!("ferry_events_{schema}");
        let events = Arc::new(EventSignal::default());
        let heads = Arc::new(head::Heads::default());
        let listening = Listening {
            heads: heads.clone(),
            events_channel: events_channel.clone(),
            events: events.clone(),
            origin: origin.clone(),
            wakeups: channel.clone(),
            cancels: cancel_channel.clone(),
            tokens: token_channel.clone(),
            token_changes: token_changes.clone(),
            queues: wakeups.clone(),
            cancelled: cancelled.clone(),
        };
        let listener = tokio::spawn(listen(pool.clone(), listening));
        let outbox = Arc::new(events::Outbox::default());
        let teller = tokio::spawn(events::send(Arc::downgrade(&outbox), pool.clone(), events_channel, origin.clone()));
        Ok(PgStore {
            pool,
            wakeups,
            channel,
            cancel_channel,
            cancelled,
            token_channel,
            token_changes,
            listener,
            rates: Default::default(),
            parks: Default::default(),
            due: Default::default(),
            heads,
            origin,
            events,
            outbox,
            teller,
        })
    }

    /// Wakes the streams of subjects whose events just committed: this process's at once,
    /// other processes' through the outbox.
    fn committed(&self, subjects: impl IntoIterator<Item = Subject>) {
        let subjects: Vec<Subject> = subjects.into_iter().collect();
        if subjects.is_empty() {
            return;
        }
        self.outbox.push(subjects.iter().copied());
        self.events.committed(subjects);
    }

    /// A transaction and the database's clock at its start.
    async fn begin(&self) -> Result<(Transaction<'static, Postgres>, Micros), StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = clock(&mut tx).await?;
        Ok((tx, now))
    }

    /// Wakes this process's dispatchers at once after a commit, without waiting for the
    /// notification's round trip through the database (other processes get that).
    fn wake_locally(&self, queues: &BTreeSet<String>) {
        for queue in queues {
            self.heads.forget(queue);
            self.wakeups.get(queue).notify_one();
        }
    }

    /// Sends one wake-up per queue, delivered when the transaction commits.
    async fn notify(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        queues: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        for queue in queues {
            sqlx::query(*NOTIFY).bind(&self.channel).bind(queue).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// The database's clock, in microseconds.
async fn clock(tx: &mut Transaction<'static, Postgres>) -> Result<Micros, StoreError> {
    Ok(sqlx::query_scalar(*CLOCK).fetch_one(&mut **tx).await?)
}

/// The id, workspace, user, kind and queue arrays of an insert.
type IdentityColumns = (Vec<JobId>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, StoreError> {
        self.submit_admitted(jobs, Admission::default()).await
    }

    async fn submit_admitted(&self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        PgStore::submit_admitted(self, jobs, admission).await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Claimed, StoreError> {
        // Two statements, each atomic on its own: promotion is idempotent, and the claim
        // logs its events in the same statement. Promotion only when something may be due.
        if let Some(generation) = self.due.must_promote(&req.queue) {
            let row = sqlx::query(PROMOTE_DUE).bind(&req.queue).fetch_one(&self.pool).await?;
            let promoted: i64 = row.try_get(0)?;
            if promoted > 0 {
                // Ready now at their due times, which may come before the queue's head.
                self.heads.forget(&req.queue);
            }
            self.due.promoted(&req.queue, generation, promoted, row.try_get(1)?);
        }
        let read = self.rates.generation();
        let rates = self.rates().await?;
        if rates.applies_to(&req.queue) {
            return self.claim_rated(&req, &rates).await;
        }
        let claimed = self.claim_from_head(&req).await?;
        self.committed(claimed.jobs.iter().map(|j| Subject::Job(j.id)));
        // `claim.sql` claims nothing once a rate is in force: one set here since the rates
        // were read sends this claim down the rated path.
        if claimed.jobs.len() < req.limit && self.rates.generation() != read {
            let rates = self.rates().await?;
            if rates.applies_to(&req.queue) {
                let mut more =
                    self.claim_rated(&ClaimRequest { limit: req.limit - claimed.jobs.len(), ..req }, &rates).await?;
                let mut jobs = claimed.jobs;
                jobs.append(&mut more.jobs);
                return Ok(Claimed { jobs, rate_wait_ms: more.rate_wait_ms });
            }
        }
        Ok(claimed)
    }

    fn park(&self, req: ClaimRequest) -> Option<Parked> {
        Some(self.parks.park(req))
    }

    async fn finish(&self, fin: Finish) -> Result<bool, StoreError> {
        Ok(self.finish_many(vec![fin]).await?.pop().unwrap_or(false))
    }

    async fn finish_many(&self, fins: Vec<Finish>) -> Result<Vec<bool>, StoreError> {
        PgStore::finish_many(self, fins).await
    }

    async fn register_worker(&self, w: WorkerInfo) -> Result<(), StoreError> {
        PgStore::register_worker(self, w).await
    }

    async fn heartbeat(&self, worker: &str, lease_ms: u64, running: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        PgStore::heartbeat(self, worker, lease_ms, running).await
    }

    async fn unregister_worker(&self, worker: &str) -> Result<(), StoreError> {
        PgStore::unregister_worker(self, worker).await
    }

    async fn workers(&self, seen_within_ms: u64) -> Result<Vec<WorkerInfo>, StoreError> {
        PgStore::workers(self, seen_within_ms).await
    }

    async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        PgStore::expired(self, limit).await
    }

    async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        PgStore::prune(self, older_than_ms, limit).await
    }

    async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
        PgStore::cancel(self, workspace, id).await
    }

    async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
        PgStore::delete(self, workspace, id).await
    }

    async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
        PgStore::replay(self, workspace, id).await
    }

    async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        PgStore::get_job(self, workspace, id).await
    }

    async fn cached_output(
        &self,
        workspace: &str,
        cache_key: &str,
        finished_since: Micros,
    ) -> Result<Option<(JobId, serde_json::Value)>, StoreError> {
        PgStore::cached_output(self, workspace, cache_key, finished_since).await
    }

    async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
        PgStore::list_jobs(self, workspace, filter).await
    }

    async fn failures(
        &self,
        workspace: &str,
        filter: crate::FailureFilter,
    ) -> Result<Vec<crate::FailureRow>, StoreError> {
        self.read_failures(workspace, filter).await
    }

    async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
        PgStore::job_events(self, workspace, id).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(QUEUE_STATS).fetch_all(&self.pool).await?;
        let counts = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, String, i64)>, sqlx::Error>>()?;
        Ok(row::queue_stats(counts))
    }

    async fn workspace_queue_stats(&self, workspace: &str) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(QUEUE_STATS_WORKSPACE).bind(workspace).fetch_all(&self.pool).await?;
        let counts = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, String, i64)>, sqlx::Error>>()?;
        Ok(row::queue_stats(counts))
    }

    async fn put_workflow(
        &self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: Value,
    ) -> Result<u32, StoreError> {
        self.put_workflow_tx(workspace, user, name, &definition).await
    }

    async fn workflows(&self, workspace: &str) -> Result<Vec<WorkflowSummary>, StoreError> {
        self.workflows_q(workspace).await
    }

    async fn workflow_versions(&self, workspace: &str, name: &str) -> Result<Vec<WorkflowVersion>, StoreError> {
        self.workflow_versions_q(workspace, name).await
    }

    async fn workflow_version(
        &self,
        workspace: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowVersion>, StoreError> {
        self.workflow_version_q(workspace, name, version).await
    }

    async fn create_run(&self, run: NewRun, planner: Planner) -> Result<(CreateRunOutcome, Advanced), StoreError> {
        self.create_run_tx(run, &planner).await
    }

    async fn advance_runs(&self, list: Vec<RunId>, planner: Planner) -> Result<Advanced, StoreError> {
        self.advance_runs_tx(list, &planner).await
    }

    async fn cancel_run(
        &self,
        workspace: &str,
        id: RunId,
        planner: Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError> {
        self.cancel_run_tx(workspace, id, &planner).await
    }

    async fn release_queued_runs(&self, defaults: WorkspaceLimits, planner: Planner) -> Result<Advanced, StoreError> {
        self.release_queued_tx(&defaults, &planner).await
    }

    async fn release_held_jobs(&self, defaults: WorkspaceLimits) -> Result<usize, StoreError> {
        PgStore::release_held_jobs(self, defaults).await
    }

    async fn run_state(&self, workspace: &str, id: RunId) -> Result<Option<RunState>, StoreError> {
        let state: Option<String> =
            sqlx::query_scalar(*RUN_STATE).bind(id).bind(workspace).fetch_optional(&self.pool).await?;
        Ok(state.map(|s| parse_enum(&s)).transpose()?)
    }

    async fn run(&self, workspace: &str, id: RunId) -> Result<Option<RunRow>, StoreError> {
        self.run_q(workspace, id).await
    }

    async fn get_run(&self, workspace: &str, id: RunId) -> Result<Option<RunDetail>, StoreError> {
        self.get_run_q(workspace, id).await
    }

    async fn list_runs(&self, workspace: &str, filter: RunFilter) -> Result<RunPage, StoreError> {
        self.list_runs_q(workspace, filter).await
    }

    async fn run_events(
        &self,
        workspace: &str,
        id: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<RunEvent>>, StoreError> {
        self.run_events_q(workspace, id, after, limit).await
    }

    async fn runs_to_sweep(&self, idle_ms: u64, limit: usize) -> Result<Vec<RunId>, StoreError> {
        self.runs_to_sweep_q(idle_ms, limit).await
    }

    async fn workspace_limits(&self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        PgStore::workspace_limits(self, workspace).await
    }

    async fn tokens_today(&self, workspace: &str) -> Result<u64, StoreError> {
        let day = ferry_core::agent::Budget::day(ferry_core::time::now_micros());
        let n: i64 = sqlx::query_scalar(*runs::TOKENS_USED).bind(workspace).bind(day).fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }

    async fn set_workspace_limits(&self, workspace: &str, limits: WorkspaceLimits) -> Result<(), StoreError> {
        PgStore::set_workspace_limits(self, workspace, limits).await
    }

    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        PgStore::queue_settings(self).await
    }

    async fn set_queue_settings(&self, q: QueueSettings) -> Result<(), StoreError> {
        PgStore::set_queue_settings(self, q).await
    }

    async fn queue_shares(&self, workspace: &str) -> Result<Vec<QueueShare>, StoreError> {
        PgStore::queue_shares(self, workspace).await
    }

    async fn set_queue_share(&self, share: QueueShare) -> Result<(), StoreError> {
        PgStore::set_queue_share(self, share).await
    }

    async fn label_rates(&self, workspace: &str) -> Result<Vec<LabelRate>, StoreError> {
        PgStore::label_rates(self, workspace).await
    }

    async fn set_label_rate(&self, workspace: &str, label: &str, rate: Option<f64>) -> Result<bool, StoreError> {
        PgStore::set_label_rate(self, workspace, label, rate).await
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        PgStore::create_token(self, token).await
    }

    async fn tokens(&self, workspace: &str) -> Result<Vec<TokenRecord>, StoreError> {
        PgStore::tokens(self, workspace).await
    }

    async fn revoke_token(&self, workspace: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        PgStore::revoke_token(self, workspace, id).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        PgStore::token_by_hash(self, hash).await
    }

    async fn active_tokens(&self) -> Result<u64, StoreError> {
        PgStore::active_tokens(self).await
    }

    async fn auth_closed(&self) -> Result<bool, StoreError> {
        PgStore::auth_closed(self).await
    }

    async fn reopen(&self) -> Result<ReopenOutcome, StoreError> {
        PgStore::reopen(self).await
    }

    fn token_changes(&self) -> Option<broadcast::Receiver<()>> {
        Some(self.token_changes.subscribe())
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Micros>, StoreError> {
        let due: Option<Micros> = sqlx::query_scalar(*NEXT_DUE).bind(queue).fetch_one(&self.pool).await?;
        // A dispatcher about to wait for this time claims when it comes: its claim must
        // promote, whoever scheduled the job.
        if due.is_some() {
            self.due.forget(queue);
        }
        Ok(due)
    }

    fn event_signal(&self) -> Arc<EventSignal> {
        self.events.clone()
    }

    fn wakeup(&self, queue: &str) -> Arc<Notify> {
        self.wakeups.get(queue)
    }

    fn cancellations(&self) -> Option<broadcast::Receiver<JobId>> {
        Some(self.cancelled.subscribe())
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
        self.release_order(workspace, key).await
    }

    fn blobs(&self) -> Arc<dyn crate::BlobBackend> {
        Arc::new(blobs::PgBlobs { pool: self.pool.clone() })
    }

    async fn escalation_signals(&self, read: crate::SignalRead) -> Result<crate::Signals, StoreError> {
        self.read_signals(read).await
    }

    async fn escalate(&self, firing: crate::Firing) -> Result<Option<crate::Fired>, StoreError> {
        self.fire(firing).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Bounded well below a load balancer's probe timeout: an unreachable database is
        // an answer ("not ready"), not a hang.
        match tokio::time::timeout(Duration::from_secs(2), sqlx::query(*PING).execute(&self.pool)).await {
            Ok(done) => done.map(|_| ()).map_err(err),
            Err(_) => Err(StoreError::Unavailable("the database did not answer within 2 s".into())),
        }
    }

    async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }
}
