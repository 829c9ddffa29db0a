//! One job on PostgreSQL: the job rules' statements ([`JobTx`]: cancel, replay, delete,
//! held release) with their transactions, and the reads of jobs and their logs.

use super::tx::PgTx;
use super::*;
use crate::rules::{
    self,
    jobs::{HeldJob, JobTx, LockedJob},
};
use ferry_core::JobError;

crate::sql::statements!("../../sql/postgres/jobs.sql":
    LOCK_JOB, CANCEL_JOB, REQUEUE_JOB, DELETE_JOB_EVENTS, DELETE_JOB, HELD_WORKSPACES,
    HELD_JOBS, UNHOLD_JOB, CACHED_OUTPUT, JOB_EXISTS, GET_JOB, LIST_JOBS, ORDER_AHEAD, ORDER_GO,
);

impl PgStore {
    pub(super) async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::jobs::cancel(&mut tx, workspace, id).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::jobs::delete(&mut tx, workspace, id).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::jobs::replay(&mut tx, workspace, id).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn release_order(&self, workspace: &str, key: &str) -> Result<Option<JobId>, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::jobs::order_release(&mut tx, workspace, key).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn read_order_ahead(
        &self,
        workspace: &str,
        key: &str,
        id: JobId,
    ) -> Result<Option<crate::OrderAhead>, StoreError> {
        let (head, nearest): (Option<JobId>, Option<JobId>) =
            sqlx::query_as(*ORDER_AHEAD).bind(workspace).bind(key).bind(id).fetch_one(&self.pool).await?;
        Ok(crate::OrderAhead::of(head, nearest))
    }

    /// Queues held jobs that fit their workspace's limits now: one workspace per
    /// transaction, under its admission lock.
    pub(super) async fn release_held_jobs(&self, defaults: WorkspaceLimits) -> Result<usize, StoreError> {
        let workspaces: Vec<String> = sqlx::query_scalar(*HELD_WORKSPACES).fetch_all(&self.pool).await?;
        let mut released = 0;
        for ws in workspaces {
            let mut tx = PgTx::begin(self).await?;
            released += rules::jobs::release_held(&mut tx, &ws, &defaults).await?;
            tx.commit().await?;
        }
        // Some may have been released as scheduled.
        if released > 0 {
            self.due.forget_all();
        }
        Ok(released)
    }

    pub(super) async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        // One snapshot for the job and its events.
        let mut tx = self.pool.begin().await?;
        sqlx::query(*SNAPSHOT_READ).execute(&mut *tx).await?;
        // The column list is put in here: `LIST_JOBS` reads the same.
        let sql = GET_JOB.to_string();
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(workspace).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let mut job = job_from_row(&row)?;
        job.attempts = crate::attempts_from_events(&read_events(&mut tx, id).await?);
        tx.commit().await?;
        Ok(Some(job))
    }

    pub(super) async fn cached_output(
        &self,
        workspace: &str,
        cache_key: &str,
        finished_since: Micros,
    ) -> Result<Option<(JobId, serde_json::Value)>, StoreError> {
        let row: Option<(JobId, String)> = sqlx::query_as(*CACHED_OUTPUT)
            .bind(workspace)
            .bind(cache_key)
            .bind(finished_since)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|(id, out)| Some((id, serde_json::from_str(&out).ok()?))))
    }

    pub(super) async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
        let mut filters = String::new();
        let mut n = 1;
        let mut next = |col: &str| {
            n += 1;
            filters.push_str(&format!(" AND {col} ${n}"));
        };
        let state = filter.state.map(|s| s.as_str());
        if state.is_some() {
            next("state =");
        }
        if filter.queue.is_some() {
            next("queue =");
        }
        if filter.kind.is_some() {
            next("kind =");
        }
        if filter.cursor.is_some() {
            next("id <");
        }
        let limit = format!("${}", n + 1);
        let sql = LIST_JOBS.replace("{filters}", &filters).replace("{limit}", &limit);
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
        let items = rows.iter().map(job_from_row).collect::<Result<Vec<_>, sqlx::Error>>()?;
        let (items, next_cursor) = crate::one_page(items, filter.limit, |j| j.id);
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(*SNAPSHOT_READ).execute(&mut *tx).await?;
        let exists = sqlx::query(*JOB_EXISTS).bind(id).bind(workspace).fetch_optional(&mut *tx).await?.is_some();
        let events = if exists { Some(read_events(&mut tx, id).await?) } else { None };
        tx.commit().await?;
        Ok(events)
    }
}

/// The job rules' statements in one transaction of the pool: each move locks its job
/// first (`FOR UPDATE`), so its statement needs no state check of its own.
#[async_trait]
impl JobTx for PgTx<'_> {
    fn now(&self) -> Micros {
        self.now
    }

    async fn lock_job(&mut self, id: JobId, workspace: Option<&str>) -> Result<Option<LockedJob>, StoreError> {
        let row = sqlx::query(*LOCK_JOB).bind(id).bind(workspace).fetch_optional(&mut *self.tx).await?;
        let Some(row) = row else { return Ok(None) };
        // Read the clock once the row is locked: after whatever moved it last.
        self.now = clock(&mut self.tx).await?;
        Ok(Some(LockedJob {
            state: parse_enum(&row.try_get::<String, _>(0)?)?,
            attempt: row.try_get::<i32, _>(1)?.max(0) as u32,
            queue: row.try_get(2)?,
            kind: row.try_get(3)?,
            workspace: row.try_get(4)?,
            ordering_key: row.try_get(5)?,
        }))
    }

    async fn set_cancelled(&mut self, id: JobId, was: JobState, error: &JobError) -> Result<(), StoreError> {
        sqlx::query(*CANCEL_JOB)
            .bind(id)
            .bind(serde_json::to_string(error).unwrap_or_default())
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        if was == JobState::Running {
            // Whichever process runs the attempt stops it when this commits.
            sqlx::query(*NOTIFY).bind(&self.store.cancel_channel).bind(id.to_string()).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn requeue(&mut self, id: JobId) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar(*REQUEUE_JOB).bind(id).bind(self.now).fetch_one(&mut *self.tx).await?)
    }

    async fn delete_job(&mut self, id: JobId) -> Result<(), StoreError> {
        sqlx::query(*DELETE_JOB_EVENTS).bind(id).execute(&mut *self.tx).await?;
        sqlx::query(*DELETE_JOB).bind(id).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn log(&mut self, events: Vec<(JobId, &'static str, Value)>) -> Result<(), StoreError> {
        self.logs.extend(events.iter().map(|(id, ..)| Subject::Job(*id)));
        insert_events(&mut self.tx, self.now, events).await
    }

    async fn wake(&mut self, queue: String) -> Result<(), StoreError> {
        // Other processes' dispatchers hear it at the commit; this one's after it.
        if !self.woken.contains(&queue) {
            sqlx::query(*NOTIFY).bind(&self.store.channel).bind(&queue).execute(&mut *self.tx).await?;
            self.woken.insert(queue);
        }
        Ok(())
    }

    async fn workspace_limits(&mut self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        let stored: Option<String> =
            sqlx::query_scalar(*WORKSPACE_LIMITS).bind(workspace).fetch_optional(&mut *self.tx).await?;
        Ok(stored.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn jobs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        let counts = in_flight(&mut self.tx, "jobs", workspace, user).await?;
        // After the admission lock, so that jobs released by passes that waited for each
        // other are due in the order they were released.
        self.now = clock(&mut self.tx).await?;
        Ok(counts)
    }

    async fn held_jobs(&mut self, workspace: &str) -> Result<Vec<HeldJob>, StoreError> {
        let rows = sqlx::query(*HELD_JOBS).bind(workspace).fetch_all(&mut *self.tx).await?;
        rows.iter().map(row::held_job).collect::<Result<_, sqlx::Error>>().map_err(err)
    }

    async fn unhold(&mut self, id: JobId, state: JobState, at: Micros) -> Result<bool, StoreError> {
        let moved = sqlx::query(*UNHOLD_JOB)
            .bind(id)
            .bind(state.as_str())
            .bind(at)
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        Ok(moved.rows_affected() == 1)
    }

    async fn order_go(&mut self, workspace: &str, key: &str) -> Result<Option<(JobId, String)>, StoreError> {
        Ok(sqlx::query_as(*ORDER_GO).bind(workspace).bind(key).bind(self.now).fetch_optional(&mut *self.tx).await?)
    }
}
