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
mod events;
mod runs;
mod tx;

use crate::park::Parks;
use crate::rate::{self, Rates};
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
const CLAIM: &str = include_str!("../sql/postgres/claim.sql");
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
const JOB_COLUMNS: &str = "id, workspace, user_id, kind, queue, state, priority, input::text, labels::text, \
     max_attempts, backoff::text, timeout_ms, total_timeout_ms, idempotency_key, created_at, run_at, deadline_at, \
     attempt, attempt_base, worker_id, lease_expires_at, finished_at, updated_at, output::text, error::text, \
     soft_timeout_ms";
const CLAIMED_COLUMNS: &str = "id, kind, queue, input::text, attempt, attempt_base, max_attempts, backoff::text, \
     timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key, run_id, priority, worker_id";

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
    rates: std::sync::Mutex<Option<(std::time::Instant, Arc<Rates>)>>,
    /// This process's claims waiting for work (see [`crate::park`]).
    parks: Arc<Parks>,
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
            sqlx::query("SELECT pg_advisory_lock(hashtext('ferry-schema:' || $1))").bind(s).execute(&mut *conn).await?;
            // `s` was checked by valid_schema: lowercase letters, digits and `_` only.
            let created =
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {s}"))).execute(&mut *conn).await;
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('ferry-schema:' || $1))")
                .bind(s)
                .execute(&mut *conn)
                .await;
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
        let listening = Listening {
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
            origin,
            events,
            outbox,
            teller,
        })
    }

    /// Every rate in force, read through a cache of [`RATES_FRESH_FOR`].
    async fn rates(&self) -> Result<Arc<Rates>, StoreError> {
        if let Some(rates) = self.fresh_rates() {
            return Ok(rates);
        }
        self.rates_on(&mut *self.pool.acquire().await?).await
    }

    fn fresh_rates(&self) -> Option<Arc<Rates>> {
        match &*self.rates.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((at, rates)) if at.elapsed() < RATES_FRESH_FOR => Some(rates.clone()),
            _ => None,
        }
    }

    /// Reads the rates on `conn` (inside a transaction, so as to need no second
    /// connection from the pool) unless the cache is fresh.
    async fn rates_on(&self, conn: &mut sqlx::PgConnection) -> Result<Arc<Rates>, StoreError> {
        if let Some(rates) = self.fresh_rates() {
            return Ok(rates);
        }
        let mut rates = Rates::default();
        for r in sqlx::query("SELECT name, rate FROM queue_settings WHERE rate > 0").fetch_all(&mut *conn).await? {
            rates.queues.insert(r.try_get(0)?, r.try_get(1)?);
        }
        for r in
            sqlx::query("SELECT queue, workspace, rate FROM queue_shares WHERE rate > 0").fetch_all(&mut *conn).await?
        {
            rates.shares.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
        }
        for r in
            sqlx::query("SELECT workspace, label, rate FROM label_rates WHERE rate > 0").fetch_all(&mut *conn).await?
        {
            rates.labels.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
        }
        let rates = Arc::new(rates);
        *self.rates.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), rates.clone()));
        Ok(rates)
    }

    fn forget_rates(&self) {
        *self.rates.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A claim through the rate buckets (see [`crate::rate`]), in one transaction: the
    /// candidates locked with `SKIP LOCKED`, the buckets they draw on locked in key order
    /// (created full if missing), the choice, the chosen jobs leased, the buckets written.
    async fn claim_rated(&self, req: &ClaimRequest, rates: &Rates) -> Result<Claimed, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let rows = sqlx::query(
            "SELECT id, workspace, labels::text FROM jobs WHERE queue = $1 AND state = 'queued' \
             AND workspace NOT IN (SELECT workspace FROM queue_shares WHERE queue = $1 AND paused) \
             AND NOT EXISTS (SELECT 1 FROM queue_settings WHERE name = $1 AND paused) \
             ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&req.queue)
        .bind(rates.window(&req.queue, req.limit) as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for r in &rows {
            let labels: Option<String> = r.try_get(2)?;
            candidates.push(rate::Candidate {
                id: r.try_get(0)?,
                workspace: r.try_get(1)?,
                labels: labels.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
            });
        }
        let needed = rates.buckets_for(&req.queue, &candidates);
        let keys: Vec<&str> = needed.iter().map(|(k, _)| k.as_str()).collect();
        let fulls: Vec<f64> = needed.iter().map(|(_, r)| rate::burst(*r)).collect();
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, tokens, refilled_at) \
             SELECT k, t, $3 FROM unnest($1::text[], $2::float8[]) AS u(k, t) ORDER BY k \
             ON CONFLICT (bucket) DO NOTHING",
        )
        .bind(&keys)
        .bind(&fulls)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut buckets = std::collections::HashMap::new();
        for r in sqlx::query(
            "SELECT bucket, tokens, refilled_at FROM rate_buckets WHERE bucket = ANY($1) ORDER BY bucket FOR UPDATE",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        {
            buckets
                .insert(r.try_get::<String, _>(0)?, rate::Bucket { tokens: r.try_get(1)?, refilled_at: r.try_get(2)? });
        }
        let choice = rate::choose(rates, &req.queue, &candidates, req.limit, &needed, &mut buckets, now);
        let (mut bkeys, mut tokens, mut ats) = (Vec::new(), Vec::new(), Vec::new());
        for (k, b) in &buckets {
            bkeys.push(k.as_str());
            tokens.push(b.tokens);
            ats.push(b.refilled_at);
        }
        sqlx::query(
            "UPDATE rate_buckets SET tokens = u.t, refilled_at = u.at \
             FROM unnest($1::text[], $2::float8[], $3::int8[]) AS u(k, t, at) WHERE rate_buckets.bucket = u.k",
        )
        .bind(&bkeys)
        .bind(&tokens)
        .bind(&ats)
        .execute(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(choice.chosen.len());
        if !choice.chosen.is_empty() {
            for r in sqlx::query(CLAIM_IDS)
                .bind(&choice.chosen)
                .bind(&req.worker)
                .bind(time::ms(req.lease_ms))
                .fetch_all(&mut *tx)
                .await?
            {
                let mut job = claimed_from_row(&r, r.try_get(16)?)?;
                job.worker = Some(req.worker.clone());
                claimed.push((job, r.try_get::<i32, _>(15)?));
            }
        }
        tx.commit().await?;
        Ok(Claimed { jobs: in_claim_order(claimed), rate_wait_ms: choice.wait_ms() })
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
            sqlx::query("SELECT pg_notify($1, $2)").bind(&self.channel).bind(queue).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// Locks a job of the workspace for the rest of the transaction and reads its state,
/// attempt, queue and kind; `None` when there is no such job.
async fn lock_job(
    tx: &mut Transaction<'static, Postgres>,
    workspace: &str,
    id: JobId,
) -> Result<Option<(JobState, u32, String, String)>, StoreError> {
    let row = sqlx::query("SELECT state, attempt, queue, kind FROM jobs WHERE id = $1 AND workspace = $2 FOR UPDATE")
        .bind(id)
        .bind(workspace)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state = parse_enum(&row.try_get::<String, _>(0)?)?;
    Ok(Some((state, row.try_get::<i32, _>(1)?.max(0) as u32, row.try_get(2)?, row.try_get(3)?)))
}

/// Takes the workspace's admission lock for `table` (`runs` or `jobs`) for the rest of the
/// transaction, then counts what `user` and the whole workspace have in flight.
pub(crate) async fn in_flight(
    tx: &mut Transaction<'static, Postgres>,
    table: &str,
    workspace: &str,
    user: &str,
) -> Result<(u64, u64), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry-admit:' || $1 || ':' || $2))")
        .bind(table)
        .bind(workspace)
        .execute(&mut **tx)
        .await?;
    // One pass over the workspace's part of the index counts both.
    let sql = match table {
        "runs" => {
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE user_id = $2) FROM runs WHERE workspace = $1 AND state = 'running'"
        }
        _ => {
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE user_id = $2) FROM jobs WHERE workspace = $1 AND run_id IS NULL \
             AND state IN ('queued', 'scheduled', 'running', 'retrying')"
        }
    };
    let (workspace_now, user_now): (i64, i64) =
        sqlx::query_as(sql).bind(workspace).bind(user).fetch_one(&mut **tx).await?;
    Ok((user_now.max(0) as u64, workspace_now.max(0) as u64))
}

/// Below `max_depth - DEPTH_SLACK` waiting jobs a submission needs no lock: the batches
/// being admitted at the same moment (at most the batch limit each, from a handful of
/// API nodes) fit in the slack.
const DEPTH_SLACK: u64 = 4_000;

/// The queue's waiting jobs, counted up to `cap + 1` at most.
async fn count_waiting(tx: &mut Transaction<'static, Postgres>, queue: &str, cap: u64) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'queued' LIMIT $2) q) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = $1 AND state IN ('scheduled', 'retrying') LIMIT $2) d)",
    )
    .bind(queue)
    .bind(cap.saturating_add(1) as i64)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n.max(0) as u64)
}

/// The jobs stored under the idempotency keys of `jobs`, by workspace and key, in one
/// statement (none when no job has a key).
async fn stored_under_keys<'a>(
    tx: &mut Transaction<'static, Postgres>,
    jobs: impl Iterator<Item = &'a NewJob>,
) -> Result<HashMap<(String, String), Stored>, StoreError> {
    let (workspaces, keys): (Vec<&str>, Vec<&str>) =
        jobs.filter_map(|j| Some((j.workspace.as_str(), j.idempotency_key.as_deref()?))).unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT j.workspace, j.idempotency_key, j.id, j.state, j.request_hash \
         FROM jobs j JOIN UNNEST($1::text[], $2::text[]) AS k(workspace, key) \
           ON j.workspace = k.workspace AND j.idempotency_key = k.key",
    )
    .bind(&workspaces)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for r in &rows {
        let found =
            Stored { id: r.try_get(2)?, state: parse_enum(&r.try_get::<String, _>(3)?)?, request_hash: r.try_get(4)? };
        stored.insert((r.try_get(0)?, r.try_get(1)?), found);
    }
    Ok(stored)
}

/// The batch's idempotency keys resolved against what is stored (see
/// [`crate::submission`]).
async fn resolve_keys(tx: &mut Transaction<'static, Postgres>, jobs: &[NewJob]) -> Result<Vec<Resolved>, StoreError> {
    let stored = stored_under_keys(tx, jobs.iter()).await?;
    submission::resolve(jobs, |job, key| Ok(stored.get(&(job.workspace.clone(), key.to_string())).cloned()))
}

/// How many times [`warm`] runs each statement: PostgreSQL plans a prepared statement
/// afresh for each of its first five executions on a connection, and only then settles
/// on a plan.
const WARM_RUNS: usize = 6;

/// Runs a pickup's statements ([`WARM_RUNS`] times) on a new connection, in a transaction
/// that is rolled back and would change nothing anyway (a submission of no jobs, a claim
/// of none). The first requests to get the connection then find the statements prepared
/// and past their first plans, instead of paying for that in their latency: on a fresh
/// server, most of the slowest 1% of pickups were among its first hundred
/// (`BENCHMARKS.md`). The pool calls it for every connection it opens, which it does only
/// once the migrations are done (the statements need the schema), and ignores a failure;
/// public for its test.
pub async fn warm(conn: &mut sqlx::PgConnection, channel: &str) -> Result<(), StoreError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let none = ClaimRequest { queue: String::new(), limit: 0, worker: String::new(), lease_ms: 0 };
    for _ in 0..WARM_RUNS {
        insert_query(SUBMIT.as_str(), None, &[], &[])
            .bind(channel)
            .bind(Vec::<String>::new())
            .bind("")
            .fetch_all(&mut *tx)
            .await?;
        claim_plain(&mut *tx, &none).await?;
    }
    tx.rollback().await?;
    Ok(())
}

/// The claim of a queue no rate applies to (`claim.sql`): on the pool, or inside the
/// transaction of a submission that runs a parked claim.
/// `tell` is the events channel and this store's origin (see `postgres/events.rs`).
async fn claim_plain<'e>(ex: impl sqlx::PgExecutor<'e>, req: &ClaimRequest) -> Result<Claimed, StoreError> {
    let rows = sqlx::query(CLAIM)
        .bind(&req.queue)
        .bind(req.limit as i64)
        .bind(&req.worker)
        .bind(time::ms(req.lease_ms))
        .fetch_all(ex)
        .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut job = claimed_from_row(r, r.try_get(16)?)?;
        job.worker = Some(req.worker.clone());
        claimed.push((job, r.try_get::<i32, _>(15)?));
    }
    Ok(Claimed { jobs: in_claim_order(claimed), rate_wait_ms: None })
}

/// The database's clock, in microseconds.
async fn clock(tx: &mut Transaction<'static, Postgres>) -> Result<Micros, StoreError> {
    Ok(sqlx::query_scalar("SELECT ferry_now()").fetch_one(&mut **tx).await?)
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext('ferry-migrations:' || current_schema()))")
        .execute(&mut *conn)
        .await?;
    let result = async {
        sqlx::query("CREATE TABLE IF NOT EXISTS ferry_migrations (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            .execute(&mut *conn)
            .await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM ferry_migrations").fetch_one(&mut *conn).await?;
        let current = current.unwrap_or(0);
        let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > latest {
            return Err(StoreError::Database(format!(
                "the database is at schema version {current}, newer than this Ferry knows ({latest})"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(|e| {
                StoreError::Database(format!("migration {version} failed: {e}"))
            })?;
            sqlx::query("INSERT INTO ferry_migrations (version) VALUES ($1)").bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
            tracing::info!(version, "applied PostgreSQL migration");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('ferry-migrations:' || current_schema()))")
        .execute(&mut *conn)
        .await;
    result
}

/// What the notification connection listens to, and whom it tells.
struct Listening {
    /// Payload: a queue with new work, or `queue\norigin` (see `submit_tail.sql`).
    wakeups: String,
    /// Wake-ups marked with this origin are this store's own, already answered.
    origin: String,
    /// Payload: the id of a running job that was cancelled.
    cancels: String,
    queues: Arc<Wakeups>,
    cancelled: broadcast::Sender<JobId>,
    /// Payload: none; tokens were created or revoked.
    tokens: String,
    token_changes: broadcast::Sender<()>,
    /// Payload: see `postgres/events.rs`.
    events_channel: String,
    events: Arc<EventSignal>,
}

/// Wakes local dispatchers and stops local attempts on notifications from any node.
async fn listen(pool: PgPool, l: Listening) {
    let wakeups = &l.queues;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the notification connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let channels = [l.wakeups.as_str(), l.cancels.as_str(), l.tokens.as_str(), l.events_channel.as_str()];
        if let Err(e) = listener.listen_all(channels).await {
            tracing::warn!(error = %e, "cannot LISTEN; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything may have happened while we were not listening.
        wakeups.all();
        let _ = l.token_changes.send(());
        l.events.committed_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == l.events_channel => match events::parse(n.payload(), &l.origin) {
                    events::Told::Own => {}
                    events::Told::Subjects(subjects) => l.events.committed(subjects),
                    events::Told::All => l.events.committed_all(),
                },
                Ok(Some(n)) if n.channel() == l.tokens => {
                    let _ = l.token_changes.send(());
                }
                Ok(Some(n)) if n.channel() == l.cancels => {
                    if let Ok(id) = JobId::parse_str(n.payload()) {
                        let _ = l.cancelled.send(id);
                    }
                }
                Ok(Some(n)) => match n.payload().split_once('\n') {
                    Some((_, origin)) if origin == l.origin => {}
                    Some((queue, _)) => wakeups.get(queue).notify_one(),
                    None => wakeups.get(n.payload()).notify_one(),
                },
                Ok(None) => {
                    tracing::warn!("notification connection lost; reconnecting");
                    wakeups.all();
                    l.events.committed_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection failed; reconnecting");
                    wakeups.all();
                    l.events.committed_all();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

fn decode(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

fn parse_enum<T: FromStr<Err = String>>(s: &str) -> Result<T, sqlx::Error> {
    s.parse().map_err(decode)
}

impl row::Columns for PgRow {
    type Error = sqlx::Error;
    fn uuid(&self, i: usize) -> Result<JobId, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_uuid(&self, i: usize) -> Result<Option<JobId>, sqlx::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        // integer and bigint columns alike.
        self.try_get::<i64, _>(i).or_else(|_| self.try_get::<i32, _>(i).map(i64::from))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get::<Option<i64>, _>(i).or_else(|_| self.try_get::<Option<i32>, _>(i).map(|v| v.map(i64::from)))
    }
    fn invalid(&self, _i: usize, why: String) -> sqlx::Error {
        decode(why)
    }
}

/// Claimed jobs with their priorities, sorted into claim order (RETURNING has none).
fn in_claim_order(mut claimed: Vec<(ClaimedJob, i32)>) -> Vec<ClaimedJob> {
    claimed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.run_at.cmp(&b.0.run_at)).then(a.0.id.cmp(&b.0.id)));
    claimed.into_iter().map(|(j, _)| j).collect()
}

fn claimed_from_row(r: &PgRow, started_at: Micros) -> Result<ClaimedJob, sqlx::Error> {
    row::claimed(r, started_at)
}

fn job_from_row(r: &PgRow) -> Result<JobRecord, sqlx::Error> {
    row::job(r)
}

/// Appends events, in the order given, in one statement.
async fn insert_events(
    tx: &mut Transaction<'static, Postgres>,
    now: Micros,
    events: Vec<(JobId, &'static str, Value)>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    for (id, kind, d) in events {
        ids.push(id);
        kinds.push(kind);
        data.push(d.to_string());
    }
    sqlx::query(INSERT_EVENTS).bind(now).bind(ids).bind(kinds).bind(data).execute(&mut **tx).await?;
    Ok(())
}

async fn read_events(tx: &mut Transaction<'static, Postgres>, id: JobId) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query("SELECT id, at, type, data::text FROM events WHERE job_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get(0)?,
                job_id: id,
                at: r.try_get(1)?,
                event_type: r.try_get(2)?,
                data: row::Columns::json(r, 3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(err)
}

/// The id, workspace, user, kind and queue arrays of an insert.
type IdentityColumns = (Vec<JobId>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// Inserts new jobs (node instances where `links` says so) in one statement; returns the
/// rows of those inserted (`id, state, queue, run_at, created_at`), not those an idempotency key
/// skipped. Their first events are the caller's to write.
/// `now: None` reads the clock in the statement.
async fn insert_jobs(
    tx: &mut Transaction<'static, Postgres>,
    now: Option<Micros>,
    jobs: &[NewJob],
    links: &[Option<(RunId, String, Option<u32>)>],
) -> Result<Vec<PgRow>, StoreError> {
    Ok(insert_query(INSERT_JOBS, now, jobs, links).fetch_all(&mut **tx).await?)
}

/// `sql` with `insert_jobs.sql`'s parameters bound ($1 to $21).
fn insert_query(
    sql: &'static str,
    now: Option<Micros>,
    jobs: &[NewJob],
    links: &[Option<(RunId, String, Option<u32>)>],
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    let n = jobs.len();
    let mut cols: IdentityColumns = Default::default();
    let mut prio = Vec::with_capacity(n);
    let mut input = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut backoff = Vec::with_capacity(n);
    let mut timeout = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut soft = Vec::with_capacity(n);
    let mut cache = Vec::with_capacity(n);
    let mut run_ids = Vec::with_capacity(n);
    let mut node_ids = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    for (j, link) in jobs.iter().zip(links.iter().chain(std::iter::repeat(&None))) {
        run_ids.push(link.as_ref().map(|l| l.0));
        node_ids.push(link.as_ref().map(|l| l.1.clone()));
        items.push(link.as_ref().and_then(|l| l.2).map(i64::from));
        cols.0.push(j.id);
        cols.1.push(j.workspace.clone());
        cols.2.push(j.user.clone());
        cols.3.push(j.kind.clone());
        cols.4.push(j.queue.clone());
        prio.push(j.priority);
        input.push(j.input.to_string());
        labels.push((!j.labels.is_empty()).then(|| serde_json::to_string(&j.labels).unwrap_or_default()));
        max_attempts.push(j.max_attempts as i32);
        backoff.push(serde_json::to_string(&j.backoff).unwrap_or_default());
        timeout.push(j.timeout_ms as i64);
        total.push(j.total_timeout_ms.map(|t| t as i64));
        keys.push(j.idempotency_key.clone());
        hashes.push(j.request_hash.clone());
        run_at.push(j.run_at);
        soft.push(j.soft_timeout_ms.map(|t| t as i64));
        cache.push(j.cache_key.clone());
    }
    sqlx::query(sql)
        .bind(now)
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .bind(prio)
        .bind(input)
        .bind(labels)
        .bind(max_attempts)
        .bind(backoff)
        .bind(timeout)
        .bind(total)
        .bind(keys)
        .bind(hashes)
        .bind(run_at)
        .bind(soft)
        .bind(cache)
        .bind(run_ids)
        .bind(node_ids)
        .bind(items)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn submit(&self, jobs: Vec<NewJob>) -> Result<Vec<Submitted>, StoreError> {
        self.submit_admitted(jobs, Admission::default()).await
    }

    async fn submit_admitted(&self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        let gated = !admission.is_unlimited() || admission.queue_on_limit;
        // An ungated submission reads the clock in its insert, one round trip less.
        let (mut tx, clock_read) = match gated {
            true => self.begin().await.map(|(tx, now)| (tx, Some(now)))?,
            false => (self.pool.begin().await?, None),
        };
        // The batch's idempotency keys, resolved before anything is written where a count
        // needs them (see `crate::submission`): only new jobs count.
        let mut resolved: Option<Vec<Resolved>> = None;
        let mut hold: Option<String> = None;
        if gated && let Some(first) = jobs.first() {
            // Admissions of one workspace take turns, so counts and inserts never race.
            let (user_now, workspace_now) = in_flight(&mut tx, "jobs", &first.workspace, &first.user).await?;
            let batch = resolve_keys(&mut tx, &jobs).await?;
            let adding = submission::adding(&jobs, &batch, None);
            resolved = Some(batch);
            if let Err(limit) = admission.check("job", user_now, workspace_now, adding) {
                if !admission.queue_on_limit {
                    return Err(limit.into());
                }
                hold = Some(limit.to_string());
            }
            // Jobs that may wait never overtake the workspace's jobs already held.
            if hold.is_none() && admission.queue_on_limit {
                let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE workspace = $1 AND state = 'held'")
                    .bind(&first.workspace)
                    .fetch_one(&mut *tx)
                    .await?;
                if held > 0 {
                    hold = Some("jobs of the workspace are held".into());
                }
            }
        }
        for (queue, cap) in &admission.queue_caps {
            // At most every job of the batch on the queue is new: far from the cap, that
            // is enough to know the batch fits, without resolving its keys.
            let most = jobs.iter().filter(|j| j.queue == *queue).count() as u64;
            if most == 0 {
                continue;
            }
            // Far from the cap, concurrent submissions cannot overshoot it together; near
            // it, submissions to the queue take turns and count again.
            let waiting = count_waiting(&mut tx, queue, *cap).await?;
            if waiting + most + DEPTH_SLACK <= *cap {
                continue;
            }
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry-depth:' || $1))")
                .bind(queue)
                .execute(&mut *tx)
                .await?;
            // READ COMMITTED: this statement sees what committed before the lock.
            let waiting = count_waiting(&mut tx, queue, *cap).await?;
            let batch = match resolved.take() {
                Some(batch) => batch,
                None => resolve_keys(&mut tx, &jobs).await?,
            };
            let adding = submission::adding(&jobs, &batch, Some(queue));
            resolved = Some(batch);
            submission::check_depth(queue, *cap, waiting, adding)?;
        }
        // Idle dispatchers of this process lease the new jobs in this very transaction
        // (see [`crate::park`]); a rated queue's claims keep to the rated path. Held jobs
        // are for nobody yet.
        let queues: BTreeSet<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        let parks = match hold.is_none() && self.parks.waiting(&queues) {
            false => Vec::new(),
            true => {
                let rates = self.rates_on(&mut tx).await?;
                self.parks.take(&queues, |q| rates.applies_to(q))
            }
        };
        // The delivery is the wake-up of a queue whose claims were taken: this store's
        // listener skips the notification, and no local wake-up follows the commit.
        let answered: BTreeSet<String> = parks.iter().map(|p| p.req.queue.clone()).collect();
        let rows = match hold {
            // The insert, the events and the wake-ups in one round trip.
            None => {
                insert_query(SUBMIT.as_str(), clock_read, &jobs, &[])
                    .bind(&self.channel)
                    .bind(answered.iter().collect::<Vec<_>>())
                    .bind(&self.origin)
                    .fetch_all(&mut *tx)
                    .await?
            }
            Some(_) => insert_jobs(&mut tx, clock_read, &jobs, &[]).await?,
        };
        let mut created: HashMap<JobId, (JobState, String)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.try_get(1)?;
            created.insert(r.try_get(0)?, (parse_enum(&state)?, r.try_get(2)?));
        }
        // Only a gated submission holds jobs, and it read the clock.
        if let (Some(reason), Some(now)) = (&hold, clock_read) {
            // Held until a slot frees: no worker may see them before. Their events in batch
            // order, as the insert logs a submission's first events.
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).filter(|id| created.contains_key(id)).collect();
            sqlx::query("UPDATE jobs SET state = 'held' WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
            let mut events = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some((state, queue)) = created.get_mut(id) {
                    *state = JobState::Held;
                    let (kind, data) = transition::held_event(queue, reason);
                    events.push((*id, kind, data));
                }
            }
            insert_events(&mut tx, now, events).await?;
        }
        // The answers, from what this transaction sees now: a job the insert skipped has
        // its key stored (by an earlier job of the batch, or by another transaction that
        // committed it first, maybe since the keys were resolved above).
        let stored = stored_under_keys(&mut tx, jobs.iter().filter(|j| !created.contains_key(&j.id))).await?;
        let resolved = submission::resolve(&jobs, |job, key| match created.contains_key(&job.id) {
            true => Ok(None),
            false => match stored.get(&(job.workspace.clone(), key.to_string())) {
                Some(s) => Ok(Some(s.clone())),
                None => Err(StoreError::Database(format!("job {} was neither inserted nor found", job.id))),
            },
        })?;
        let out = submission::answers(&jobs, &resolved, |id| created[&id].0);
        let touched: BTreeSet<String> = match hold {
            None => created.into_values().map(|(_, queue)| queue).collect(),
            Some(_) => BTreeSet::new(),
        };
        let mut parked = Vec::with_capacity(parks.len());
        for park in parks {
            let claimed = claim_plain(&mut *tx, &park.req).await;
            parked.push((park, claimed));
        }
        let committed = match parked.iter().any(|(_, c)| c.is_err()) {
            false => tx.commit().await.map_err(StoreError::from),
            true => Err(StoreError::Database("a parked claim failed".into())),
        };
        // Exactly one delivery per taken park, empty when nothing committed.
        for (park, claimed) in parked {
            if committed.is_ok()
                && let Ok(c) = &claimed
            {
                self.committed(c.jobs.iter().map(|j| Subject::Job(j.id)));
            }
            park.deliver(match (&committed, claimed) {
                (Ok(()), Ok(claimed)) => claimed,
                _ => Claimed::default(),
            });
        }
        committed?;
        self.wake_locally(&(&touched - &answered));
        Ok(out)
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Claimed, StoreError> {
        // Two statements, each atomic on its own: promotion is idempotent, and the claim
        // logs its events in the same statement.
        sqlx::query(PROMOTE_DUE).bind(&req.queue).execute(&self.pool).await?;
        let rates = self.rates().await?;
        let claimed = match rates.applies_to(&req.queue) {
            true => self.claim_rated(&req, &rates).await?,
            false => claim_plain(&self.pool, &req).await?,
        };
        self.committed(claimed.jobs.iter().map(|j| Subject::Job(j.id)));
        Ok(claimed)
    }

    fn park(&self, req: ClaimRequest) -> Option<Parked> {
        Some(self.parks.park(req))
    }

    async fn finish(&self, fin: Finish) -> Result<bool, StoreError> {
        Ok(self.finish_many(vec![fin]).await?.pop().unwrap_or(false))
    }

    async fn finish_many(&self, fins: Vec<Finish>) -> Result<Vec<bool>, StoreError> {
        if fins.is_empty() {
            return Ok(Vec::new());
        }
        let n = fins.len();
        let (mut ids, mut attempts, mut states, mut outputs, mut errors) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut finished, mut retry_ins, mut base_incs) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut ev_ids, mut ev_attempts, mut ev_types, mut ev_data, mut ev_retry) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for fin in &fins {
            // The store's clock is read in the statement; the columns' times are relative.
            let c = transition::finish_columns(&fin.result, 0);
            let retry_in = c.run_at;
            ids.push(fin.id);
            attempts.push(fin.attempt as i32);
            states.push(c.state.as_str());
            outputs.push(c.output.map(|o| o.to_string()));
            errors.push(c.error.map(|e| serde_json::to_string(e).unwrap_or_default()));
            finished.push(c.finished);
            retry_ins.push(retry_in);
            base_incs.push(c.base_inc as i32);
            for (kind, data) in transition::finish_events(fin, 0) {
                ev_ids.push(fin.id);
                ev_attempts.push(fin.attempt as i32);
                ev_types.push(kind);
                ev_data.push(data.to_string());
                ev_retry.push(retry_in);
            }
        }
        let applied: BTreeSet<(JobId, i32)> = sqlx::query_as(FINISH)
            .bind(ids)
            .bind(attempts)
            .bind(states)
            .bind(outputs)
            .bind(errors)
            .bind(finished)
            .bind(retry_ins)
            .bind(base_incs)
            .bind(ev_ids)
            .bind(ev_attempts)
            .bind(ev_types)
            .bind(ev_data)
            .bind(ev_retry)
            .bind(&self.channel)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        self.committed(applied.iter().map(|(id, _)| Subject::Job(*id)));
        Ok(fins.iter().map(|f| applied.contains(&(f.id, f.attempt as i32))).collect())
    }

    async fn register_worker(&self, w: WorkerInfo) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, node, queues, started_at, last_heartbeat, running) \
             VALUES ($1, $2, $3::jsonb, ferry_now(), ferry_now(), 0) \
             ON CONFLICT (id) DO UPDATE SET node = $2, queues = $3::jsonb, last_heartbeat = ferry_now()",
        )
        .bind(&w.id)
        .bind(&w.node)
        .bind(serde_json::to_string(&w.queues).unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&self, worker: &str, lease_ms: u64, running: &[JobId]) -> Result<Vec<JobId>, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let ids = sqlx::query_scalar(HEARTBEAT)
            .bind(worker)
            .bind(now.saturating_add(time::ms(lease_ms)))
            .bind(running)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("UPDATE workers SET last_heartbeat = $2, running = $3 WHERE id = $1")
            .bind(worker)
            .bind(now)
            .bind(running.len() as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn unregister_worker(&self, worker: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(worker).execute(&self.pool).await?;
        Ok(())
    }

    async fn workers(&self, seen_within_ms: u64) -> Result<Vec<WorkerInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, node, queues::text, started_at, last_heartbeat, running FROM workers \
             WHERE last_heartbeat >= ferry_now() - $1 ORDER BY id",
        )
        .bind(time::ms(seen_within_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerInfo {
                    id: r.try_get(0)?,
                    node: r.try_get(1)?,
                    queues: row::Columns::json(r, 2)?,
                    started_at: r.try_get(3)?,
                    last_heartbeat: r.try_get(4)?,
                    running: r.try_get::<i32, _>(5)?.max(0) as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        let sql = format!(
            "SELECT {CLAIMED_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at < ferry_now() \
             ORDER BY lease_expires_at LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit as i64).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let mut job = claimed_from_row(r, 0)?;
                job.worker = r.try_get(16)?;
                Ok(job)
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let cut = now.saturating_sub(time::ms(older_than_ms));
        let gone = sqlx::query(PRUNE)
            .bind(crate::id_floor(cut / 1000))
            .bind(cut)
            .bind(limit as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Ended runs, with their nodes and logs, likewise (their dead jobs stay).
        let runs: Vec<JobId> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE id < $1 AND state != 'running' AND finished_at < $2 \
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(crate::id_floor(cut / 1000))
        .bind(cut)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        if !runs.is_empty() {
            sqlx::query("DELETE FROM run_events WHERE run_id = ANY($1)").bind(&runs).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM run_nodes WHERE run_id = ANY($1)").bind(&runs).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM runs WHERE id = ANY($1)").bind(&runs).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM workers WHERE last_heartbeat < $1")
            .bind(now.saturating_sub(time::ms(86_400_000)))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM rate_buckets WHERE refilled_at < $1")
            .bind(now.saturating_sub(rate::IDLE_BUCKET_US))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((gone as usize).max(runs.len()))
    }

    async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((state, attempt, queue, kind)) = lock_job(&mut tx, workspace, id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        if state.is_final() {
            return Ok(CancelOutcome::AlreadyFinal(state));
        }
        // Read the clock once the row is locked: after whatever moved it last.
        let now = clock(&mut tx).await?;
        let error = transition::cancel_error();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = $2::jsonb, finished_at = $3, worker_id = NULL, \
             lease_expires_at = NULL, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_string(&error).unwrap_or_default())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (event, data) = transition::cancel_event(state, attempt, &error);
        insert_events(&mut tx, now, vec![(id, event, data)]).await?;
        if state == JobState::Running {
            // Whichever process runs the attempt stops it when this commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.cancel_channel)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.committed([Subject::Job(id)]);
        Ok(CancelOutcome::Cancelled { was_running: state == JobState::Running, queue, kind })
    }

    async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((state, ..)) = lock_job(&mut tx, workspace, id).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        if !state.is_final() {
            return Ok(DeleteOutcome::NotFinished(state));
        }
        sqlx::query("DELETE FROM events WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((state, ..)) = lock_job(&mut tx, workspace, id).await? else {
            return Ok(ReplayOutcome::NotFound);
        };
        if !matches!(state, JobState::Dead | JobState::Cancelled) {
            return Ok(ReplayOutcome::NotReplayable(state));
        }
        let now = clock(&mut tx).await?;
        let queue: String = sqlx::query_scalar(
            "UPDATE jobs SET state = 'queued', run_at = $2, attempt_base = attempt, \
             deadline_at = CASE WHEN total_timeout_ms IS NULL THEN NULL ELSE $2 + total_timeout_ms * 1000 END, \
             error = NULL, output = NULL, finished_at = NULL, updated_at = $2 WHERE id = $1 RETURNING queue",
        )
        .bind(id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let events = transition::replay_events(state, &queue).map(|(kind, data)| (id, kind, data));
        insert_events(&mut tx, now, events.into()).await?;
        let touched = BTreeSet::from([queue]);
        self.notify(&mut tx, &touched).await?;
        tx.commit().await?;
        self.wake_locally(&touched);
        self.committed([Subject::Job(id)]);
        Ok(ReplayOutcome::Replayed)
    }

    async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        // One snapshot for the job and its events.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND workspace = $2");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(workspace).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let mut job = job_from_row(&row)?;
        job.attempts = crate::attempts_from_events(&read_events(&mut tx, id).await?);
        tx.commit().await?;
        Ok(Some(job))
    }

    async fn cached_output(
        &self,
        workspace: &str,
        cache_key: &str,
        finished_since: Micros,
    ) -> Result<Option<(JobId, serde_json::Value)>, StoreError> {
        let row: Option<(JobId, String)> = sqlx::query_as(
            "SELECT id, output::text FROM jobs WHERE workspace = $1 AND cache_key = $2 AND state = 'succeeded' \
             AND finished_at >= $3 AND output IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
        )
        .bind(workspace)
        .bind(cache_key)
        .bind(finished_since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(id, out)| Some((id, serde_json::from_str(&out).ok()?))))
    }

    async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = $1");
        let mut n = 1;
        let mut next = |col: &str| {
            n += 1;
            format!(" AND {col} ${n}")
        };
        let state = filter.state.map(|s| s.as_str());
        if state.is_some() {
            sql.push_str(&next("state ="));
        }
        if filter.queue.is_some() {
            sql.push_str(&next("queue ="));
        }
        if filter.kind.is_some() {
            sql.push_str(&next("kind ="));
        }
        if filter.cursor.is_some() {
            sql.push_str(&next("id <"));
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${n}"));
        // Only constants and placeholders are spliced in; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(workspace);
        if let Some(s) = state {
            q = q.bind(s);
        }
        if let Some(queue) = &filter.queue {
            q = q.bind(queue);
        }
        if let Some(kind) = &filter.kind {
            q = q.bind(kind);
        }
        if let Some(c) = filter.cursor {
            q = q.bind(c);
        }
        let rows = q.bind(filter.limit as i64 + 1).fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(job_from_row).collect::<Result<Vec<_>, sqlx::Error>>()?;
        let next_cursor = if items.len() > filter.limit {
            items.truncate(filter.limit);
            items.last().map(|j| j.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let exists = sqlx::query("SELECT 1 FROM jobs WHERE id = $1 AND workspace = $2")
            .bind(id)
            .bind(workspace)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let events = if exists { Some(read_events(&mut tx, id).await?) } else { None };
        tx.commit().await?;
        Ok(events)
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
        let workspaces: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT workspace FROM jobs WHERE state = 'held' LIMIT 100")
                .fetch_all(&self.pool)
                .await?;
        let mut released = 0;
        for ws in workspaces {
            let (mut tx, mut now) = self.begin().await?;
            let stored: Option<String> = sqlx::query_scalar("SELECT limits FROM workspace_limits WHERE workspace = $1")
                .bind(&ws)
                .fetch_optional(&mut *tx)
                .await?;
            let limits: WorkspaceLimits =
                stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| defaults.clone());
            let held = sqlx::query(
                "SELECT id, user_id, queue, run_at FROM jobs WHERE workspace = $1 AND state = 'held' ORDER BY id LIMIT 1000",
            )
            .bind(&ws)
            .fetch_all(&mut *tx)
            .await?;
            let (mut events, mut woken) = (Vec::new(), BTreeSet::new());
            // A user refused once stays refused for this pass: each count is a fresh
            // snapshot, and a slot freed meanwhile must not let a later job jump ahead.
            let mut refused = std::collections::HashSet::new();
            for row in &held {
                let (id, user, queue, run_at): (JobId, String, String, Micros) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                if refused.contains(&user) {
                    continue;
                }
                let (user_now, workspace_now) = in_flight(&mut tx, "jobs", &ws, &user).await?;
                match limits.jobs_for(&user).check("job", user_now, workspace_now, 1) {
                    Err(l) if l.scope == "workspace" => break,
                    Err(_) => {
                        refused.insert(user);
                        continue;
                    }
                    Ok(()) => {}
                }
                // Read after the admission lock, so jobs released by passes that waited
                // for each other are due in the order they were released.
                now = clock(&mut tx).await?;
                let (state, at) = if run_at > now { (JobState::Scheduled, run_at) } else { (JobState::Queued, now) };
                // The list was read before the admission lock: another pass may have
                // released this job since.
                let moved = sqlx::query(
                    "UPDATE jobs SET state = $2, run_at = $3, updated_at = $4 WHERE id = $1 AND state = 'held'",
                )
                .bind(id)
                .bind(state.as_str())
                .bind(at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() == 0 {
                    continue;
                }
                let (kind, data) = transition::submit_event(state, &queue, at);
                events.push((id, kind, data));
                woken.insert(queue);
                released += 1;
            }
            let touched: Vec<Subject> = events.iter().map(|(id, ..)| Subject::Job(*id)).collect();
            insert_events(&mut tx, now, events).await?;
            self.notify(&mut tx, &woken).await?;
            tx.commit().await?;
            self.wake_locally(&woken);
            self.committed(touched);
        }
        Ok(released)
    }

    async fn run_state(&self, workspace: &str, id: RunId) -> Result<Option<RunState>, StoreError> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 AND workspace = $2")
            .bind(id)
            .bind(workspace)
            .fetch_optional(&self.pool)
            .await?;
        Ok(state.map(|s| parse_enum(&s)).transpose()?)
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
        let text: Option<String> = sqlx::query_scalar("SELECT limits FROM workspace_limits WHERE workspace = $1")
            .bind(workspace)
            .fetch_optional(&self.pool)
            .await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Database(e.to_string()))).transpose()
    }

    async fn set_workspace_limits(&self, workspace: &str, limits: WorkspaceLimits) -> Result<(), StoreError> {
        let text = serde_json::to_string(&limits).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(
            "INSERT INTO workspace_limits (workspace, limits, updated_at) VALUES ($1, $2, ferry_now()) \
             ON CONFLICT (workspace) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
        )
        .bind(workspace)
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let rows = sqlx::query("SELECT name, concurrency, max_depth, rate, paused FROM queue_settings ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(QueueSettings {
                    name: r.try_get(0)?,
                    concurrency: r.try_get::<Option<i64>, _>(1)?.map(|c| c.clamp(0, u32::MAX as i64) as u32),
                    max_depth: r.try_get::<Option<i64>, _>(2)?.map(|d| d.max(0) as u64),
                    rate: r.try_get(3)?,
                    paused: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn set_queue_settings(&self, q: QueueSettings) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO queue_settings (name, concurrency, max_depth, rate, paused, updated_at) \
             VALUES ($1, $2, $3, $4, $5, ferry_now()) ON CONFLICT (name) DO UPDATE SET \
             concurrency = excluded.concurrency, max_depth = excluded.max_depth, rate = excluded.rate, \
             paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .bind(&q.name)
        .bind(q.concurrency.map(i64::from))
        .bind(q.max_depth.map(|d| d as i64))
        .bind(q.rate)
        .bind(q.paused)
        .execute(&self.pool)
        .await?;
        self.forget_rates();
        Ok(())
    }

    async fn queue_shares(&self, workspace: &str) -> Result<Vec<QueueShare>, StoreError> {
        let rows =
            sqlx::query("SELECT queue, workspace, paused, rate FROM queue_shares WHERE workspace = $1 ORDER BY queue")
                .bind(workspace)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(QueueShare {
                    queue: r.try_get(0)?,
                    workspace: r.try_get(1)?,
                    paused: r.try_get(2)?,
                    rate: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn set_queue_share(&self, share: QueueShare) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO queue_shares (queue, workspace, paused, rate, updated_at) \
             VALUES ($1, $2, $3, $4, ferry_now()) ON CONFLICT (queue, workspace) DO UPDATE SET \
             paused = excluded.paused, rate = excluded.rate, updated_at = excluded.updated_at",
        )
        .bind(&share.queue)
        .bind(&share.workspace)
        .bind(share.paused)
        .bind(share.rate)
        .execute(&mut *tx)
        .await?;
        self.forget_rates();
        let woken: BTreeSet<String> = if share.paused { BTreeSet::new() } else { [share.queue.clone()].into() };
        // Resumed jobs are ready work: every node's dispatchers look again.
        self.notify(&mut tx, &woken).await?;
        tx.commit().await?;
        self.wake_locally(&woken);
        Ok(())
    }

    async fn label_rates(&self, workspace: &str) -> Result<Vec<LabelRate>, StoreError> {
        let rows = sqlx::query("SELECT label, rate FROM label_rates WHERE workspace = $1 ORDER BY label")
            .bind(workspace)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(LabelRate { label: r.try_get(0)?, rate: r.try_get(1)? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn set_label_rate(&self, workspace: &str, label: &str, rate: Option<f64>) -> Result<bool, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let existed = sqlx::query("DELETE FROM label_rates WHERE workspace = $1 AND label = $2")
            .bind(workspace)
            .bind(label)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if let Some(rate) = rate {
            sqlx::query("INSERT INTO label_rates (workspace, label, rate, updated_at) VALUES ($1, $2, $3, $4)")
                .bind(workspace)
                .bind(label)
                .bind(rate)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.forget_rates();
        Ok(existed)
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let (mut tx, now) = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (id, workspace, user_id, role, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id)
        .bind(&token.workspace)
        .bind(&token.user)
        .bind(token.role.as_str())
        .bind(&token.hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // From the first token on, the store stays closed (see `Store::auth_closed`). Always
        // written, so that the row lock orders this against a concurrent `reopen`.
        sqlx::query("UPDATE auth_state SET closed = true").execute(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, '')").bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id: token.id,
            workspace: token.workspace,
            user: token.user,
            role: token.role,
            created_at: now,
            revoked_at: None,
        })
    }

    async fn tokens(&self, workspace: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE workspace = $1 ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(workspace).fetch_all(&self.pool).await?;
        rows.iter().map(crate::tokens::token_row).collect::<Result<_, sqlx::Error>>().map_err(err)
    }

    async fn revoke_token(&self, workspace: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let n =
            sqlx::query("UPDATE tokens SET revoked_at = $3 WHERE id = $1 AND workspace = $2 AND revoked_at IS NULL")
                .bind(id)
                .bind(workspace)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // Every node drops its cached view of the token when this commits.
        sqlx::query("SELECT pg_notify($1, '')").bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1 AND revoked_at IS NULL");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hash).fetch_optional(&self.pool).await?;
        row.as_ref().map(crate::tokens::token_row).transpose().map_err(err)
    }

    async fn active_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL").fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }

    async fn auth_closed(&self) -> Result<bool, StoreError> {
        // The flag, or any unrevoked token: either keeps the store closed.
        Ok(sqlx::query_scalar(
            "SELECT closed OR EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL) FROM auth_state WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn reopen(&self) -> Result<ReopenOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock orders this against a token's creation, which writes the row too:
        // a token committed before it is counted below, one after it closes the store again.
        let closed: bool =
            sqlx::query_scalar("SELECT closed FROM auth_state WHERE id = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
        let active: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL").fetch_one(&mut *tx).await?;
        if active > 0 {
            tx.rollback().await?;
            return Ok(ReopenOutcome::TokensRemain(active as u64));
        }
        if !closed {
            tx.rollback().await?;
            return Ok(ReopenOutcome::AlreadyOpen);
        }
        sqlx::query("UPDATE auth_state SET closed = false").execute(&mut *tx).await?;
        // Every node drops its cached view of the flag when this commits.
        sqlx::query("SELECT pg_notify($1, '')").bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(ReopenOutcome::Reopened)
    }

    fn token_changes(&self) -> Option<broadcast::Receiver<()>> {
        Some(self.token_changes.subscribe())
    }

    async fn next_due(&self, queue: &str) -> Result<Option<Micros>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(run_at) FROM jobs WHERE queue = $1 AND state IN ('scheduled', 'retrying')")
            .bind(queue)
            .fetch_one(&self.pool)
            .await?)
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

    async fn ping(&self) -> Result<(), StoreError> {
        // Bounded well below a load balancer's probe timeout: an unreachable database is
        // an answer ("not ready"), not a hang.
        match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(done) => done.map(|_| ()).map_err(err),
            Err(_) => Err(StoreError::Unavailable("the database did not answer within 2 s".into())),
        }
    }

    async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }
}
