//! Workflows and runs on PostgreSQL: the run rules' statements ([`RunTx`] on [`PgTx`]),
//! the store methods that run those rules, and the reads. Every run transition is one
//! transaction that first locks the run's row (`FOR UPDATE`), so two nodes advancing one
//! run take turns and the run's event ids follow commit order.

use super::tx::PgTx;
use super::{PgStore, SNAPSHOT_READ, clock, err, in_flight, insert_events, insert_jobs, parse_enum};
use crate::rules::{self, runs::KeyedRun, runs::QueuedRun, runs::RunChange, runs::RunTx};
use crate::runs::{
    self, Advanced, CreateRunOutcome, NewRun, Planner, RunDetail, RunEvent, RunFilter, RunJobRow, RunNodeRow, RunPage,
    RunRow, WorkflowSummary, WorkflowVersion,
};
use crate::{StoreError, Subject, transition};
use async_trait::async_trait;
use ferry_core::run::{NodeRecord, NodeState, RunId, RunJobNew, RunState};
use ferry_core::time::Micros;
use ferry_core::{JobId, JobState};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use std::collections::BTreeSet;

crate::sql::statements!("../../sql/postgres/runs.sql":
    MIRROR, SYNCED, WORKFLOW_DEFINITION, RUN_NODES, RUN_JOBS,
    LOCK_WORKFLOW_NAME, NEXT_WORKFLOW_VERSION, INSERT_WORKFLOW, QUEUED_RUN_WORKSPACES, WORKFLOWS, WORKFLOW_VERSION,
    WORKFLOW_VERSIONS, GET_RUN, LIST_RUNS, RUN_EXISTS, RUN_EVENTS, RUNS_TO_SWEEP, LOCK_RUN_KEY,
    RUN_BY_KEY, LATEST_VERSION, QUEUED_RUN_COUNT, INSERT_RUN, LOCK_RUN, INSERT_RUN_EVENT, PUT_NODE, FINISH_RUN, TOUCH_RUN, REQUEST_RUN_CANCEL, START_RUN, QUEUED_RUNS,
    TOKENS_USED, ADD_TOKENS,
);

type Tx = Transaction<'static, Postgres>;

fn rows<T>(rows: &[PgRow], f: impl Fn(&PgRow) -> Result<T, sqlx::Error>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect::<Result<_, sqlx::Error>>().map_err(err)
}

async fn definition(tx: &mut Tx, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = sqlx::query_scalar(*WORKFLOW_DEFINITION)
        .bind(workspace)
        .bind(name)
        .bind(i64::from(version))
        .fetch_optional(&mut **tx)
        .await?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Database(e.to_string()))).transpose()
}

async fn read_nodes(tx: &mut Tx, id: RunId) -> Result<Vec<RunNodeRow>, StoreError> {
    let r = sqlx::query(sqlx::AssertSqlSafe(String::from(*RUN_NODES))).bind(id).fetch_all(&mut **tx).await?;
    rows(&r, runs::node_row)
}

async fn read_jobs(tx: &mut Tx, id: RunId) -> Result<Vec<runs::RunJobRow>, StoreError> {
    let r = sqlx::query(sqlx::AssertSqlSafe(String::from(*RUN_JOBS))).bind(id).fetch_all(&mut **tx).await?;
    rows(&r, runs::job_row)
}

impl PgStore {
    pub(super) async fn put_workflow_tx(
        &self,
        workspace: &str,
        user: &str,
        name: &str,
        definition: &Value,
    ) -> Result<u32, StoreError> {
        let (mut tx, now) = self.begin().await?;
        // Versions of one name are numbered under a lock on that name.
        sqlx::query(*LOCK_WORKFLOW_NAME).bind(workspace).bind(name).execute(&mut *tx).await?;
        let version: i64 =
            sqlx::query_scalar(*NEXT_WORKFLOW_VERSION).bind(workspace).bind(name).fetch_one(&mut *tx).await?;
        sqlx::query(*INSERT_WORKFLOW)
            .bind(workspace)
            .bind(name)
            .bind(version)
            .bind(definition.to_string())
            .bind(now)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version as u32)
    }

    pub(super) async fn create_run_tx(
        &self,
        run: NewRun,
        planner: &Planner,
    ) -> Result<(CreateRunOutcome, Advanced), StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::runs::create(&mut tx, run, planner).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn advance_runs_tx(&self, list: Vec<RunId>, planner: &Planner) -> Result<Advanced, StoreError> {
        let mut all = Advanced::default();
        // One transaction per run: a run's lock is held only for its own advance.
        for id in list {
            let mut tx = PgTx::begin(self).await?;
            let advanced = rules::runs::advance(&mut tx, id, planner).await?;
            tx.commit().await?;
            all.merge(advanced);
        }
        Ok(all)
    }

    pub(super) async fn cancel_run_tx(
        &self,
        workspace: &str,
        id: RunId,
        planner: &Planner,
    ) -> Result<(Option<RunState>, Advanced), StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::runs::cancel(&mut tx, workspace, id, planner).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Starts waiting runs that fit now: one workspace per transaction, under its
    /// admission lock.
    pub(super) async fn release_queued_tx(
        &self,
        defaults: &crate::WorkspaceLimits,
        planner: &Planner,
    ) -> Result<Advanced, StoreError> {
        let mut out = Advanced::default();
        let workspaces: Vec<String> = sqlx::query_scalar(*QUEUED_RUN_WORKSPACES).fetch_all(&self.pool).await?;
        for ws in workspaces {
            let mut tx = PgTx::begin(self).await?;
            let advanced = rules::runs::release_queued(&mut tx, &ws, defaults, planner).await?;
            tx.commit().await?;
            out.merge(advanced);
        }
        Ok(out)
    }

    pub(super) async fn workflows_q(&self, workspace: &str) -> Result<Vec<WorkflowSummary>, StoreError> {
        let r = sqlx::query(*WORKFLOWS).bind(workspace).fetch_all(&self.pool).await?;
        rows(&r, |r| {
            Ok(WorkflowSummary {
                name: r.try_get(0)?,
                latest_version: r.try_get::<i64, _>(1)? as u32,
                created_at: r.try_get(2)?,
            })
        })
    }

    /// One version of a workflow: `version`, or the latest when `None`.
    pub(super) async fn workflow_version_q(
        &self,
        workspace: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowVersion>, StoreError> {
        let r = sqlx::query(*WORKFLOW_VERSION)
            .bind(workspace)
            .bind(name)
            .bind(version.map(i64::from))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows(&r, runs::version_row)?.pop())
    }

    pub(super) async fn workflow_versions_q(
        &self,
        workspace: &str,
        name: &str,
    ) -> Result<Vec<WorkflowVersion>, StoreError> {
        let r = sqlx::query(*WORKFLOW_VERSIONS).bind(workspace).bind(name).fetch_all(&self.pool).await?;
        rows(&r, runs::version_row)
    }

    pub(super) async fn run_q(&self, workspace: &str, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let sql = String::from(*GET_RUN);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(workspace).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| runs::run_row(&r)).transpose()?)
    }

    pub(super) async fn get_run_q(&self, workspace: &str, id: RunId) -> Result<Option<RunDetail>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(*SNAPSHOT_READ).execute(&mut *tx).await?;
        let sql = String::from(*GET_RUN);
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(workspace).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let run = runs::run_row(&row)?;
        let definition = definition(&mut tx, &run.workspace, &run.workflow, run.version).await?;
        let nodes = read_nodes(&mut tx, id).await?;
        let jobs = read_jobs(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(RunDetail { run, definition, nodes, jobs }))
    }

    pub(super) async fn list_runs_q(&self, workspace: &str, filter: RunFilter) -> Result<RunPage, StoreError> {
        // Assembled here: each filter given adds a condition on the next parameter, and
        // the limit takes the one after the last.
        let mut filters = String::new();
        let mut n = 1;
        if filter.state.is_some() {
            n += 1;
            filters.push_str(&format!(" AND state = ${n}"));
        }
        if filter.workflow.is_some() {
            n += 1;
            filters.push_str(&format!(" AND workflow = ${n}"));
        }
        if filter.cursor.is_some() {
            n += 1;
            filters.push_str(&format!(" AND id < ${n}"));
        }
        let limit = format!("${}", n + 1);
        let sql = String::from(*LIST_RUNS).replace("{filters}", &filters).replace("{limit}", &limit);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(workspace);
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        if let Some(w) = &filter.workflow {
            q = q.bind(w.clone());
        }
        if let Some(c) = filter.cursor {
            q = q.bind(c);
        }
        let r = q.bind(filter.limit as i64 + 1).fetch_all(&self.pool).await?;
        let items = rows(&r, runs::run_row)?;
        let (items, next_cursor) = crate::one_page(items, filter.limit, |r| r.id);
        Ok(RunPage { items, next_cursor })
    }

    pub(super) async fn run_events_q(
        &self,
        workspace: &str,
        id: RunId,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<RunEvent>>, StoreError> {
        let exists: Option<i32> =
            sqlx::query_scalar(*RUN_EXISTS).bind(id).bind(workspace).fetch_optional(&self.pool).await?;
        if exists.is_none() {
            return Ok(None);
        }
        let sql = String::from(*RUN_EVENTS);
        let r =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(after).bind(limit as i64).fetch_all(&self.pool).await?;
        Ok(Some(rows(&r, runs::event_row)?))
    }

    pub(super) async fn runs_to_sweep_q(&self, idle_ms: u64, limit: usize) -> Result<Vec<RunId>, StoreError> {
        Ok(sqlx::query_scalar(*RUNS_TO_SWEEP)
            .bind(ferry_core::time::ms(idle_ms))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?)
    }
}

#[async_trait]
impl RunTx for PgTx<'_> {
    async fn run_by_key(&mut self, workspace: &str, key: &str) -> Result<Option<KeyedRun>, StoreError> {
        sqlx::query(*LOCK_RUN_KEY).bind(workspace).bind(key).execute(&mut *self.tx).await?;
        let found = sqlx::query(*RUN_BY_KEY).bind(workspace).bind(key).fetch_optional(&mut *self.tx).await?;
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
            sqlx::query_scalar(*LATEST_VERSION).bind(workspace).bind(name).fetch_one(&mut *self.tx).await?;
        Ok(latest.map(|v| v as u32))
    }

    async fn definition(&mut self, workspace: &str, name: &str, version: u32) -> Result<Option<Value>, StoreError> {
        definition(&mut self.tx, workspace, name, version).await
    }

    async fn runs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        in_flight(&mut self.tx, "runs", workspace, user).await
    }

    async fn queued_count(&mut self, workspace: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(*QUEUED_RUN_COUNT).bind(workspace).fetch_one(&mut *self.tx).await?;
        Ok(n.max(0) as u64)
    }

    async fn insert_run(
        &mut self,
        run: &NewRun,
        version: u32,
        state: RunState,
        deadline: Micros,
    ) -> Result<(), StoreError> {
        sqlx::query(*INSERT_RUN)
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
            .bind(i32::try_from(run.depth).unwrap_or(i32::MAX))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn lock_run(&mut self, id: RunId) -> Result<Option<RunRow>, StoreError> {
        let sql = String::from(*LOCK_RUN);
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *self.tx).await? else {
            return Ok(None);
        };
        // The clock is read once the run is locked: after whatever advanced it last.
        self.now = clock(&mut self.tx).await?;
        Ok(Some(runs::run_row(&row)?))
    }

    async fn run_event(&mut self, run: RunId, kind: &str, node: Option<&str>, data: &Value) -> Result<(), StoreError> {
        sqlx::query(*INSERT_RUN_EVENT)
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
        let copied = sqlx::query(*MIRROR).bind(run).execute(&mut *self.tx).await?.rows_affected();
        sqlx::query(*SYNCED).bind(run).execute(&mut *self.tx).await?;
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

    async fn put_node(&mut self, run: RunId, node: &str, rec: &NodeRecord) -> Result<(), StoreError> {
        sqlx::query(*PUT_NODE)
            .bind(run)
            .bind(node)
            .bind(rec.state.unwrap_or(NodeState::Pending).as_str())
            .bind(rec.items.map(i64::from))
            .bind(rec.output.as_ref().map(Value::to_string))
            .bind(rec.error.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()))
            .bind(self.now)
            .bind(rec.agent.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default()))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn tokens_used(&mut self, workspace: &str, day: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(*TOKENS_USED).bind(workspace).bind(day).fetch_one(&mut *self.tx).await?;
        Ok(n.max(0) as u64)
    }

    async fn add_tokens(&mut self, workspace: &str, day: i64, tokens: u64) -> Result<(), StoreError> {
        sqlx::query(*ADD_TOKENS).bind(workspace).bind(day).bind(tokens as i64).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn update_run(&mut self, run: RunId, change: RunChange<'_>) -> Result<bool, StoreError> {
        let q = match change {
            RunChange::Finish { state, error } => sqlx::query(*FINISH_RUN)
                .bind(run)
                .bind(state.as_str())
                .bind(error.map(|e| serde_json::to_string(e).unwrap_or_default()))
                .bind(self.now),
            RunChange::Touch => sqlx::query(*TOUCH_RUN).bind(run).bind(self.now),
            RunChange::CancelRequested => sqlx::query(*REQUEST_RUN_CANCEL).bind(run).bind(self.now),
            RunChange::Start { deadline } => sqlx::query(*START_RUN).bind(run).bind(deadline).bind(self.now),
        };
        Ok(q.execute(&mut *self.tx).await?.rows_affected() > 0)
    }

    async fn queued_runs(&mut self, workspace: &str) -> Result<Vec<QueuedRun>, StoreError> {
        let rows = sqlx::query(*QUEUED_RUNS).bind(workspace).fetch_all(&mut *self.tx).await?;
        rows.iter().map(crate::row::queued_run).collect::<Result<_, sqlx::Error>>().map_err(super::err)
    }
}
