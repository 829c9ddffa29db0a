//! Submissions on SQLite: idempotency keys, admission (limits, the depth cap, held jobs)
//! and the insert of a job with its first event. The decisions are
//! [`crate::submission`]'s; held jobs are released by [`crate::rules::jobs`].

use super::batch::{MultiRow, bind_row};
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
        let new: Vec<(&NewJob, Option<NodeOf<'_>>)> =
            jobs.iter().zip(&resolved).filter(|(_, r)| **r == Resolved::New).map(|(job, _)| (job, None)).collect();
        let states = self.insert_jobs(&new, hold.as_deref())?;
        let inserted: HashMap<JobId, JobState> = new.iter().map(|(job, _)| job.id).zip(states).collect();
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
        run: Option<NodeOf<'_>>,
        held: Option<&str>,
    ) -> Result<JobState, StoreError> {
        Ok(self.insert_jobs(&[(job, run)], held)?[0])
    }

    /// Inserts new jobs (node instances where a run is given) in a few statements, each
    /// with its first event; held by `held`'s reason when given. Their states, in order.
    pub(super) fn insert_jobs(
        &mut self,
        jobs: &[(&NewJob, Option<NodeOf<'_>>)],
        held: Option<&str>,
    ) -> Result<Vec<JobState>, StoreError> {
        let now = self.now;
        let rows: Vec<JobRow<'_>> = jobs
            .iter()
            .map(|&(job, run)| {
                let (state, run_at) = match job.run_at {
                    _ if held.is_some() => (JobState::Held, job.run_at.unwrap_or(now).max(now)),
                    Some(at) if at > now => (JobState::Scheduled, at),
                    _ => (JobState::Queued, now),
                };
                JobRow {
                    job,
                    run,
                    state,
                    run_at,
                    deadline: job.total_timeout_ms.map(|t| run_at.saturating_add(time::ms(t))),
                    input: job.input.to_string(),
                    labels: (!job.labels.is_empty()).then(|| serde_json::to_string(&job.labels).unwrap_or_default()),
                    backoff: serde_json::to_string(&job.backoff).unwrap_or_default(),
                }
            })
            .collect();
        INSERT_JOBS.insert(&self.conn, &rows, |s, first, r| r.bind(s, first, now)).map_err(db)?;
        for r in &rows {
            let (kind, data) = match held {
                Some(reason) => transition::held_event(&r.job.queue, reason),
                None => transition::submit_event(r.state, &r.job.queue, r.run_at),
            };
            self.event(r.job.id, kind, data);
            if held.is_none() {
                self.woken.insert(r.job.queue.clone());
            }
        }
        Ok(rows.iter().map(|r| r.state).collect())
    }
}

/// The run, node and item a job is an instance of.
pub(super) type NodeOf<'a> = (RunId, &'a str, Option<u32>);

/// The jobs' multi-row insert (`insert_job.sql`).
static INSERT_JOBS: std::sync::LazyLock<MultiRow> = std::sync::LazyLock::new(|| MultiRow::new(INSERT_JOB, 26));

/// A new job's row, as inserted.
struct JobRow<'a> {
    job: &'a NewJob,
    run: Option<NodeOf<'a>>,
    state: JobState,
    run_at: Micros,
    deadline: Option<Micros>,
    input: String,
    labels: Option<String>,
    backoff: String,
}

impl JobRow<'_> {
    /// Binds the row's 26 parameters from `first` on, in `insert_job.sql`'s column order.
    fn bind(&self, s: &mut rusqlite::Statement<'_>, first: usize, now: Micros) -> rusqlite::Result<()> {
        let (job, run) = (self.job, self.run);
        bind_row(
            s,
            first,
            &[
                &job.id,
                &job.workspace,
                &job.user,
                &job.kind,
                &job.queue,
                &self.state.as_str(),
                &job.priority,
                &self.input,
                &self.labels,
                &job.max_attempts,
                &self.backoff,
                &(job.timeout_ms as i64),
                &job.total_timeout_ms.map(|t| t as i64),
                &job.idempotency_key,
                &job.request_hash,
                &now,
                &self.run_at,
                &self.deadline,
                &now,
                &job.soft_timeout_ms.map(|t| t as i64),
                &job.cache_key,
                &run.map(|r| r.0),
                &run.map(|r| r.1),
                &run.and_then(|r| r.2),
                &job.breaker,
                &job.ordering_key,
            ],
        )
    }
}
