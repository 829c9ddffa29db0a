//! The run rules' statements ([`RunTx`]) on a PostgreSQL transaction of their own: what
//! the rules in `rules/runs.rs` read and write, in this backend's SQL. The transaction
//! notes what it touched; [`PgRunTx::commit`] hands that to the store's wake-ups after
//! the commit.

use super::runs::{MIRROR, RUN_COLUMNS, SYNCED, definition, read_jobs, read_nodes};
use super::{PgStore, clock, in_flight, insert_events, insert_jobs, parse_enum};
use crate::rules::runs::{KeyedRun, QueuedRun, RunChange, RunTx};
use crate::runs::{self, NewRun, RunJobRow, RunNodeRow, RunRow};
use crate::{StoreError, Subject, WorkspaceLimits, transition};
use async_trait::async_trait;
use ferry_core::run::{NodeRecord, NodeState, RunId, RunJobNew, RunState};
use ferry_core::time::Micros;
use ferry_core::{JobId, JobState};
use serde_json::Value;
use sqlx::{Postgres, Row, Transaction};
use std::collections::BTreeSet;

/// One transaction of run rules.
pub(super) struct PgRunTx<'a> {
    store: &'a PgStore,
    tx: Transaction<'static, Postgres>,
    now: Micros,
    /// Queues that got new work.
    woken: BTreeSet<String>,
    /// Logs written that an open event stream may follow.
    logs: Vec<Subject>,
}

impl<'a> PgRunTx<'a> {
    pub(super) async fn begin(store: &'a PgStore) -> Result<Self, StoreError> {
        let (tx, now) = store.begin().await?;
        Ok(PgRunTx { store, tx, now, woken: BTreeSet::new(), logs: Vec::new() })
    }

    /// Commits, then wakes this process's dispatchers of the queues that got work and the
    /// streams of the logs written (other processes' through the outbox).
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.store.wake_locally(&self.woken);
        self.store.committed(self.logs);
        Ok(())
    }
}

#[async_trait]
impl RunTx for PgRunTx<'_> {
    fn now(&self) -> Micros {
        self.now
    }

    async fn run_by_key(&mut self, workspace: &str, key: &str) -> Result<Option<KeyedRun>, StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ferry-run-key:' || $1 || ':' || $2))")
            .bind(workspace)
            .bind(key)
            .execute(&mut *self.tx)
            .await?;
        let found = sqlx::query(
            "SELECT id, version, state, request_hash FROM runs WHERE workspace = $1 AND idempotency_key = $2",
        )
        .bind(workspace)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = found else { return Ok(None) };
        Ok(Some(KeyedRun {
            id: row.try_get(0)?,
            version: row.try_get::<i64, _>(1)? as u32,
            state: parse_enum(&row.try_get::<String, _>(2)?)?,
            request_hash: row.try_get(3)?,
        }))
    }

    async fn latest_version(&mut self, workspace: &str, name: &str) -> Result<Option<u32>, StoreError> {
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM workflows WHERE workspace = $1 AND name = $2")
                .bind(workspace)
                .bind(name)
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(latest.map(|v| v as u32))
    }

    async fn definition(&mut self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        definition(&mut self.tx, workspace, name, version).await
    }

    async fn runs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        in_flight(&mut self.tx, "runs", workspace, user).await
    }

    async fn queued_count(&mut self, workspace: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE workspace = $1 AND state = 'queued'")
            .bind(workspace)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn insert_run(
        &mut self,
        run: &NewRun,
        version: u32,
        state: RunState,
        deadline: Micros,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runs (id, workspace, user_id, workflow, version, state, input, idempotency_key, \
             request_hash, created_at, deadline_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $11, $6::jsonb, $7, $8, $9, $10, $9)",
        )
        .bind(run.id)
        .bind(&run.workspace)
        .bind(&run.user)
        .bind(&run.workflow)
        .bind(i64::from(version))
        .bind(run.input.to_string())
        .bind(&run.idempotency_key)
        .bind(&run.request_hash)
        .bind(self.now)
        .bind(deadline)
        .bind(state.as_str())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn lock_run(&mut self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *self.tx).await? else {
            return Ok(None);
        };
        // The clock is read once the run is locked: after whatever advanced it last.
        self.now = clock(&mut self.tx).await?;
        Ok(Some(runs::run_row(&row)?))
    }

    async fn run_event(&mut self, run: RunId, kind: &str, node: Option<&str>, data: &Value) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO run_events (run_id, at, type, node_id, data) VALUES ($1, $2, $3, $4, $5)")
            .bind(run)
            .bind(self.now)
            .bind(kind)
            .bind(node)
            .bind(data.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.logs.push(Subject::Run(run));
        Ok(())
    }

    async fn mirror(&mut self, run: RunId) -> Result<(), StoreError> {
        let copied = sqlx::query(MIRROR).bind(run).execute(&mut *self.tx).await?.rows_affected();
        sqlx::query(SYNCED).bind(run).execute(&mut *self.tx).await?;
        if copied > 0 {
            self.logs.push(Subject::Run(run));
        }
        Ok(())
    }

    async fn nodes(&mut self, run: RunId) -> Result<Vec<RunNodeRow>, StoreError> {
        read_nodes(&mut self.tx, run).await
    }

    async fn jobs(&mut self, run: RunId) -> Result<Vec<RunJobRow>, StoreError> {
        read_jobs(&mut self.tx, run).await
    }

    async fn create_jobs(&mut self, run: RunId, jobs: &[RunJobNew]) -> Result<(), StoreError> {
        let new: Vec<_> = jobs.iter().map(|c| c.job.clone()).collect();
        let links: Vec<_> = jobs.iter().map(|c| Some((run, c.node.clone(), c.item))).collect();
        let inserted = insert_jobs(&mut self.tx, Some(self.now), &new, &links).await?;
        let mut events = Vec::with_capacity(inserted.len());
        let mut woken = BTreeSet::new();
        for r in &inserted {
            let job: JobId = r.try_get(0)?;
            let state: JobState = parse_enum(&r.try_get::<String, _>(1)?)?;
            let queue: String = r.try_get(2)?;
            let (kind, data) = transition::submit_event(state, &queue, r.try_get(3)?);
            events.push((job, kind, data));
            woken.insert(queue);
        }
        insert_events(&mut self.tx, self.now, events).await?;
        self.store.notify(&mut self.tx, &woken).await?;
        self.woken.extend(woken);
        Ok(())
    }

    async fn cancel_job(&mut self, id: JobId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT state, attempt FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let state: JobState = parse_enum(&row.try_get::<String, _>(0)?)?;
        if state.is_final() {
            return Ok(false);
        }
        let attempt = row.try_get::<i32, _>(1)?.max(0) as u32;
        let error = transition::cancel_error();
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = $2::jsonb, finished_at = $3, worker_id = NULL, \
             lease_expires_at = NULL, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(serde_json::to_string(&error).unwrap_or_default())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        let (event, data) = transition::cancel_event(state, attempt, &error);
        insert_events(&mut self.tx, self.now, vec![(id, event, data)]).await?;
        self.logs.push(Subject::Job(id));
        if state == JobState::Running {
            // The process running it stops the attempt when this commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.store.cancel_channel)
                .bind(id.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(state == JobState::Running)
    }

    async fn put_node(&mut self, run: RunId, node: &str, rec: &NodeRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_nodes (run_id, node_id, state, items, output, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (run_id, node_id) DO UPDATE SET state = excluded.state, items = excluded.items, \
             output = excluded.output, error = excluded.error, updated_at = excluded.updated_at",
        )
        .bind(run)
        .bind(node)
        .bind(rec.state.unwrap_or(NodeState::Pending).as_str())
        .bind(rec.items.map(i64::from))
        .bind(rec.output.as_ref().map(Value::to_string))
        .bind(rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()))
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn update_run(&mut self, run: RunId, change: RunChange<'_>) -> Result<bool, StoreError> {
        let q = match change {
            RunChange::Finish { state, error } => {
                sqlx::query("UPDATE runs SET state = $2, error = $3, finished_at = $4, updated_at = $4 WHERE id = $1")
                    .bind(run)
                    .bind(state.as_str())
                    .bind(error.map(|e| serde_json::to_string(e).unwrap_or_default()))
                    .bind(self.now)
            }
            RunChange::Touch => sqlx::query("UPDATE runs SET updated_at = $2 WHERE id = $1").bind(run).bind(self.now),
            RunChange::CancelRequested => {
                sqlx::query("UPDATE runs SET cancel_requested = true, updated_at = $2 WHERE id = $1")
                    .bind(run)
                    .bind(self.now)
            }
            RunChange::Start { deadline } => sqlx::query(
                "UPDATE runs SET state = 'running', deadline_at = $2, updated_at = $3 WHERE id = $1 AND state = 'queued'",
            )
            .bind(run)
            .bind(deadline)
            .bind(self.now),
        };
        Ok(q.execute(&mut *self.tx).await?.rows_affected() > 0)
    }

    async fn workspace_limits(&mut self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        let stored: Option<String> = sqlx::query_scalar("SELECT limits FROM workspace_limits WHERE workspace = $1")
            .bind(workspace)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(stored.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn queued_runs(&mut self, workspace: &str) -> Result<Vec<QueuedRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, workflow, version FROM runs WHERE workspace = $1 AND state = 'queued' \
             ORDER BY id LIMIT 1000",
        )
        .bind(workspace)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedRun {
                    id: r.try_get(0)?,
                    user: r.try_get(1)?,
                    workflow: r.try_get(2)?,
                    version: r.try_get::<i64, _>(3)? as u32,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(super::err)
    }
}
