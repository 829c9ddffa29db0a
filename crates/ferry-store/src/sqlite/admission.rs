//! Submissions on SQLite: idempotency keys, admission (limits, the depth cap, held jobs
//! and their release) and the insert of a job with its first event.

use super::*;

impl Writer {
    pub(super) fn submit(&mut self, jobs: Vec<NewJob>, admission: Admission) -> Result<Vec<Submitted>, StoreError> {
        // First, read only: resolve every idempotency key, so that a conflict is refused
        // before anything of the batch is written, and only new jobs are counted.
        let resolved = submission::resolve(&jobs, |job, key| {
            let found: Option<(JobId, String, Option<String>)> = self
                .conn
                .prepare_cached(
                    "SELECT id, state, request_hash FROM jobs WHERE workspace = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![job.workspace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match found {
                Some((id, state, request_hash)) => Some(Stored { id, state: parse_enum(&state)?, request_hash }),
                None => None,
            })
        })?;
        // Still before any write: the jobs this batch adds must fit the limits.
        let mut hold = None;
        if !admission.is_unlimited()
            && let Some(first) = jobs.first()
        {
            let adding = submission::adding(&jobs, &resolved, None);
            let (user_now, workspace_now) = self.in_flight("jobs", &first.workspace, &first.user)?;
            if let Err(limit) = admission.check("job", user_now, workspace_now, adding) {
                if !admission.queue_on_limit {
                    return Err(limit.into());
                }
                hold = Some(limit.to_string());
            }
        }
        // Jobs that may wait never overtake the workspace's jobs already held.
        if hold.is_none()
            && admission.queue_on_limit
            && let Some(first) = jobs.first()
        {
            let held: i64 = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM jobs WHERE workspace = ?1 AND state = 'held'")?
                .query_row(params![first.workspace], |r| r.get(0))?;
            if held > 0 {
                hold = Some("jobs of the workspace are held".into());
            }
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

    /// The workspace's own limits, else `defaults`.
    pub(super) fn limits_or(&self, workspace: &str, defaults: &WorkspaceLimits) -> Result<WorkspaceLimits, StoreError> {
        let stored: Option<String> = self
            .conn
            .prepare_cached("SELECT limits FROM workspace_limits WHERE workspace = ?1")?
            .query_row(params![workspace], |r| r.get(0))
            .optional()?;
        Ok(stored.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| defaults.clone()))
    }

    /// Queues held jobs that fit their limits now, oldest first per workspace (`defaults`:
    /// the limits of a workspace that set none). Returns how many were released.
    pub(super) fn release_held(&mut self, defaults: &WorkspaceLimits) -> Result<usize, StoreError> {
        let workspaces: Vec<String> = self
            .conn
            .prepare_cached("SELECT DISTINCT workspace FROM jobs WHERE state = 'held' LIMIT 100")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut released = 0;
        for ws in workspaces {
            let limits = self.limits_or(&ws, defaults)?;
            let held: Vec<(JobId, String, String, Micros)> = self
                .conn
                .prepare_cached(
                    "SELECT id, user_id, queue, run_at FROM jobs WHERE workspace = ?1 AND state = 'held' ORDER BY id LIMIT 1000",
                )?
                .query_map(params![ws], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, user, queue, run_at) in held {
                let (user_now, workspace_now) = self.in_flight("jobs", &ws, &user)?;
                match limits.jobs_for(&user).check("job", user_now, workspace_now, 1) {
                    Err(l) if l.scope == "workspace" => break,
                    Err(_) => continue,
                    Ok(()) => {}
                }
                let (state, at) =
                    if run_at > self.now { (JobState::Scheduled, run_at) } else { (JobState::Queued, self.now) };
                self.conn
                    .prepare_cached(
                        "UPDATE jobs SET state = ?2, run_at = ?3, updated_at = ?4 WHERE id = ?1 AND state = 'held'",
                    )?
                    .execute(params![id, state.as_str(), at, self.now])?;
                let (kind, data) = transition::submit_event(state, &queue, at);
                self.event(id, kind, data)?;
                self.woken.insert(queue);
                released += 1;
            }
        }
        Ok(released)
    }

    /// The queue's waiting jobs (queued, scheduled, retrying), counted up to `cap + 1` at
    /// most through the partial indexes of each state.
    pub(super) fn waiting(&self, queue: &str, cap: u64) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1 AND state = 'queued' LIMIT ?2)) \
                 + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE queue = ?1 \
                    AND state IN ('scheduled', 'retrying') LIMIT ?2))",
            )?
            .query_row(params![queue, cap.saturating_add(1) as i64], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// What `user` and their whole workspace have in flight: running runs (`table` =
    /// `runs`) or unfinished standalone jobs (`jobs`), counted through the partial indexes.
    pub(super) fn in_flight(&self, table: &str, workspace: &str, user: &str) -> Result<(u64, u64), StoreError> {
        // One pass over the workspace's part of the index counts both.
        let sql = match table {
            "runs" => {
                "SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM runs WHERE workspace = ?1 AND state = 'running'"
            }
            _ => {
                "SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0) FROM jobs WHERE workspace = ?1 AND run_id IS NULL \
                 AND state IN ('queued', 'scheduled', 'running', 'retrying')"
            }
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
