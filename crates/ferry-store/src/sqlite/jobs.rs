//! Attempts and single jobs on SQLite: finishes, heartbeats, workers, pruning, and the
//! job rules' statements ([`JobTx`]: cancel, replay, delete, held release).

use super::batch::{MultiRow, bind_row};
use super::tx::SqliteTx;
use super::*;
use crate::rules::jobs::{HeldJob, JobTx, LockedJob};
use ferry_core::JobError;

crate::sql::statements!("../../sql/sqlite/jobs.sql":
    WORKER_HEARTBEAT, REGISTER_WORKER, PRUNABLE_RUNS, DELETE_RUN_EVENTS, DELETE_RUN_NODES, DELETE_RUN,
    PRUNE_WORKERS, PRUNE_RATE_BUCKETS, LOCK_JOB, CANCEL_JOB, REQUEUE_JOB, DELETE_JOB_EVENTS, DELETE_JOB,
    HELD_JOBS, UNHOLD_JOB, ORDER_AHEAD, ORDER_GO,
);

/// The finish's multi-row update (`finish.sql`).
static FINISH_JOBS: std::sync::LazyLock<MultiRow> = std::sync::LazyLock::new(|| MultiRow::new(FINISH, 10));

impl Writer {
    /// Ends the attempts, in order: whether each one changed its job (a stale attempt
    /// changes nothing). A job twice in `fins` is ended by its first finish that holds.
    pub(super) fn finish_many(&mut self, fins: &[Finish]) -> Result<Vec<bool>, StoreError> {
        let mut changed = Vec::with_capacity(fins.len());
        // One statement updates a job once: a job seen again starts the next statement.
        let mut start = 0;
        let mut seen = HashSet::new();
        for (i, fin) in fins.iter().enumerate() {
            if !seen.insert(fin.id) {
                changed.extend(self.finish_apart(&fins[start..i])?);
                seen.clear();
                seen.insert(fin.id);
                start = i;
            }
        }
        changed.extend(self.finish_apart(&fins[start..])?);
        Ok(changed)
    }

    /// Ends attempts of as many different jobs, in a few statements.
    fn finish_apart(&mut self, fins: &[Finish]) -> Result<Vec<bool>, StoreError> {
        let now = self.now;
        let mut done = HashSet::new();
        FINISH_JOBS.query(
            &self.conn,
            fins,
            |s, first, fin| {
                let cols = transition::finish_columns(&fin.result, now);
                bind_row(
                    s,
                    first,
                    &[
                        &fin.id,
                        &fin.attempt,
                        &cols.state.as_str(),
                        &cols.output.map(|o| o.to_string()),
                        &cols.error.map(|e| serde_json::to_string(e).unwrap_or_default()),
                        &cols.finished.then_some(now),
                        &cols.run_at,
                        &cols.base_inc,
                        &now,
                        &cols.breaker,
                    ],
                )
            },
            |r| {
                done.insert(r.get::<_, JobId>(0)?);
                Ok(())
            },
        )?;
        let mut changed = Vec::with_capacity(fins.len());
        for fin in fins {
            let applied = done.contains(&fin.id);
            if applied {
                for (kind, data) in transition::finish_events(fin, now) {
                    self.event(fin.id, kind, data);
                }
                if matches!(
                    fin.result,
                    FinishResult::Retry { .. } | FinishResult::Released | FinishResult::Deferred { .. }
                ) {
                    self.woken.insert(fin.queue.clone());
                }
            }
            changed.push(applied);
        }
        Ok(changed)
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
        self.conn.prepare_cached(*WORKER_HEARTBEAT)?.execute(params![worker, self.now, running.len() as i64])?;
        Ok(held)
    }

    pub(super) fn register_worker(&mut self, w: &WorkerInfo) -> Result<(), StoreError> {
        let queues = serde_json::to_string(&w.queues).unwrap_or_default();
        self.conn.prepare_cached(*REGISTER_WORKER)?.execute(params![w.id, w.node, queues, self.now])?;
        Ok(())
    }

    pub(super) fn prune(&mut self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let cut = self.now.saturating_sub(time::ms(older_than_ms));
        let ids = self
            .conn
            .prepare_cached(PRUNE)?
            .query_map(params![crate::id_floor(cut / 1000), cut, limit as i64], |r| r.get::<_, JobId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // No noted event may outlive its job's deletion.
        self.flush_events()?;
        for id in &ids {
            self.conn.prepare_cached(*DELETE_JOB_EVENTS)?.execute(params![id])?;
            self.conn.prepare_cached(*DELETE_JOB)?.execute(params![id])?;
        }
        // Ended runs, with their nodes and logs, likewise (their dead jobs stay).
        let runs = self
            .conn
            .prepare_cached(*PRUNABLE_RUNS)?
            .query_map(params![crate::id_floor(cut / 1000), cut, limit as i64], |r| r.get::<_, JobId>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for id in &runs {
            for sql in [*DELETE_RUN_EVENTS, *DELETE_RUN_NODES, *DELETE_RUN] {
                self.conn.prepare_cached(sql)?.execute(params![id])?;
            }
        }
        let day_ago = self.now.saturating_sub(time::ms(86_400_000));
        self.conn.prepare_cached(*PRUNE_WORKERS)?.execute(params![day_ago])?;
        let idle = self.now.saturating_sub(rate::IDLE_BUCKET_US);
        self.conn.prepare_cached(*PRUNE_RATE_BUCKETS)?.execute(params![idle])?;
        Ok(ids.len().max(runs.len()))
    }
}

/// The job rules' statements on the writer's transaction. The writer holds the whole
/// database, so [`JobTx::lock_job`] is a plain read and every move's `WHERE` checks only
/// the id.
#[async_trait]
impl JobTx for SqliteTx<'_> {
    fn now(&self) -> Micros {
        self.w.now
    }

    async fn lock_job(&mut self, id: JobId, workspace: Option<&str>) -> Result<Option<LockedJob>, StoreError> {
        type Row = (String, u32, String, String, String, Option<String>);
        let row: Option<Row> = self
            .w
            .conn
            .prepare_cached(*LOCK_JOB)?
            .query_row(params![id, workspace], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()?;
        match row {
            Some((state, attempt, queue, kind, workspace, ordering_key)) => {
                Ok(Some(LockedJob { state: parse_enum(&state)?, attempt, queue, kind, workspace, ordering_key }))
            }
            None => Ok(None),
        }
    }

    async fn set_cancelled(&mut self, id: JobId, _was: JobState, error: &JobError) -> Result<(), StoreError> {
        // The engine stops a running attempt of its own: SQLite has one process.
        let error = serde_json::to_string(error).unwrap_or_default();
        self.w.conn.prepare_cached(*CANCEL_JOB)?.execute(params![id, error, self.w.now])?;
        Ok(())
    }

    async fn requeue(&mut self, id: JobId) -> Result<String, StoreError> {
        Ok(self.w.conn.prepare_cached(*REQUEUE_JOB)?.query_row(params![id, self.w.now], |r| r.get(0))?)
    }

    async fn delete_job(&mut self, id: JobId) -> Result<(), StoreError> {
        // No noted event may outlive its job's deletion.
        self.w.flush_events()?;
        self.w.conn.prepare_cached(*DELETE_JOB_EVENTS)?.execute(params![id])?;
        self.w.conn.prepare_cached(*DELETE_JOB)?.execute(params![id])?;
        Ok(())
    }

    async fn log(&mut self, events: Vec<(JobId, &'static str, serde_json::Value)>) -> Result<(), StoreError> {
        for (id, kind, data) in events {
            self.w.event(id, kind, data);
        }
        Ok(())
    }

    async fn wake(&mut self, queue: String) -> Result<(), StoreError> {
        self.w.woken.insert(queue);
        Ok(())
    }

    async fn workspace_limits(&mut self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        let stored: Option<String> =
            self.w.conn.prepare_cached(*WORKSPACE_LIMITS)?.query_row(params![workspace], |r| r.get(0)).optional()?;
        Ok(stored.and_then(|t| serde_json::from_str(&t).ok()))
    }

    async fn jobs_in_flight(&mut self, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        self.w.in_flight("jobs", workspace, user)
    }

    async fn held_jobs(&mut self, workspace: &str) -> Result<Vec<HeldJob>, StoreError> {
        Ok(self
            .w
            .conn
            .prepare_cached(*HELD_JOBS)?
            .query_map(params![workspace], |r| row::held_job(r))?
            .collect::<rusqlite::Result<_>>()?)
    }

    async fn unhold(&mut self, id: JobId, state: JobState, at: Micros) -> Result<bool, StoreError> {
        Ok(self.w.conn.prepare_cached(*UNHOLD_JOB)?.execute(params![id, state.as_str(), at, self.w.now])? == 1)
    }

    async fn order_go(&mut self, workspace: &str, key: &str) -> Result<Option<(JobId, String)>, StoreError> {
        let now = self.w.now;
        Ok(self
            .w
            .conn
            .prepare_cached(*ORDER_GO)?
            .query_row(params![workspace, key, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}

impl SqliteStore {
    pub(super) async fn read_order_ahead(
        &self,
        workspace: &str,
        key: &str,
        id: JobId,
    ) -> Result<Option<crate::OrderAhead>, StoreError> {
        let (workspace, key) = (workspace.to_string(), key.to_string());
        self.read(move |c| {
            let (head, nearest): (Option<JobId>, Option<JobId>) = c
                .prepare_cached(*ORDER_AHEAD)?
                .query_row(params![workspace, key, id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(crate::OrderAhead::of(head, nearest))
        })
        .await
    }
}

impl Writer {
    pub(super) fn order_release(&mut self, workspace: &str, key: &str) -> Result<Option<JobId>, StoreError> {
        rules::ready(rules::jobs::order_release(&mut self.tx(), workspace, key))
    }
}
