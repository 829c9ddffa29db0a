//! Attempts and single jobs on SQLite: finishes, heartbeats, workers, pruning, and cancel,
//! replay and delete.

use super::*;

impl Writer {
    pub(super) fn finish(&mut self, fin: &Finish) -> Result<bool, StoreError> {
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

    pub(super) fn heartbeat(
        &mut self,
        worker: &str,
        lease_ms: u64,
        running: &[JobId],
    ) -> Result<Vec<JobId>, StoreError> {
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

    pub(super) fn register_worker(&mut self, w: &WorkerInfo) -> Result<(), StoreError> {
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

    pub(super) fn prune(&mut self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
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

    pub(super) fn cancel(&mut self, workspace: &str, id: JobId) -> Result<CancelOutcome, StoreError> {
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

    pub(super) fn replay(&mut self, workspace: &str, id: JobId) -> Result<ReplayOutcome, StoreError> {
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

    pub(super) fn delete(&mut self, workspace: &str, id: JobId) -> Result<DeleteOutcome, StoreError> {
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
    pub(super) fn state_of(
        &self,
        workspace: &str,
        id: JobId,
    ) -> Result<Option<(JobState, u32, String, String)>, StoreError> {
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
