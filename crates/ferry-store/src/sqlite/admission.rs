//! Submissions on SQLite: idempotency keys, admission (limits, the depth cap, held jobs)
//! and the insert of a job with its first event. The decisions are
//! [`crate::submission`]'s; held jobs are released by [`crate::rules::jobs`].

use super::*;

crate::sql::statements!("../../sql/sqlite/admission.sql":
    STORED_UNDER_KEY, HELD_COUNT, HELD_WORKSPACES, COUNT_WAITING, RUNS_IN_FLIGHT, JOBS_IN_FLIGHT,
);

impl Writer {
    pub(super) fn submit(&mut self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        // First, read only: resolve every idempotency key, so that a conflict is refused
        // before anything of the batch is written, and only new jobs are counted.
        let resolved = submission::resolve(&jobs, |job, key| {
            let found: Option<(JobId, String, Option<String>)> = self
                .conn
                .prepare_cached(*STORED_UNDER_KEY)?
                .query_row(params![job.workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match found {
                Some((id, state, request_hash)) => Some(Stored { id, state: parse_enum(&state)?, request_hash }),
                None => None,
            })
        })?;
        // Still before any write: the jobs this batch adds must fit the limits.
        let mut hold = None;
        if submission::gated(&admission)
            && let Some(first) = jobs.first()
        {
            let in_flight = self.in_flight("jobs", &first.workspace, &first.user)?;
            let held: i64 = match admission.queue_on_limit {
                true => self.conn.prepare_cached(*HELD_COUNT)?.query_row(params![first.workspace], |r| r.get(0))?,
                false => 0,
            };
            let adding = submission::adding(&jobs, &resolved, None);
            hold = submission::hold(&admission, in_flight, adding, held.max(0) as u64)?;
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

    /// The workspaces with held jobs (at most 100 a pass).
    pub(super) fn workspaces_with_held_jobs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.conn.prepare_cached(*HELD_WORKSPACES)?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    /// The queue's waiting jobs (queued, scheduled, retrying), counted up to `cap + 1` at
    /// most through the partial indexes of each state.
    pub(super) fn waiting(&self, queue: &str, cap: u64) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(*COUNT_WAITING)?
            .query_row(params![queue, cap.saturating_add(1) as i64], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// What `user` and their whole workspace have in flight: running runs (`table` =
    /// `runs`) or unfinished standalone jobs (`jobs`), counted through the partial indexes.
    pub(super) fn in_flight(&self, table: &str, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        // One pass over the workspace's part of the index counts both.
        let sql = match table {
            "runs" => *RUNS_IN_FLIGHT,
            _ => *JOBS_IN_FLIGHT,
        };
        let (workspace_now, user_now): (i64, i64) =
            self.conn.prepare_cached(sql)?.query_row(params![workspace, user], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((user_now.max(0) as u64, workspace_now.max(0) as u64))
    }

    /// Inserts one new job (a node instance when `run` is given) with its first event.
    pub(super) fn insert_job(
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
            job.breaker,
            job.ordering_key,
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
}
