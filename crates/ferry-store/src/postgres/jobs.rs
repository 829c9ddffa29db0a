//! One job on PostgreSQL: cancel, replay and delete, and the reads of jobs and their logs.

use super::*;

impl PgStore {
    pub(super) async fn cancel(&self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
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

    pub(super) async fn delete(&self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
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

    pub(super) async fn replay(&self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
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

    pub(super) async fn get_job(&self, workspace: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
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

    pub(super) async fn cached_output(
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

    pub(super) async fn list_jobs(&self, workspace: &str, filter: JobFilter) -> Result<Page, StoreError> {
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

    pub(super) async fn job_events(&self, workspace: &str, id: JobId) -> Result<Option<Vec<Event>>, StoreError> {
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
}
