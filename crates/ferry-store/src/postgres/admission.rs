//! Submissions on PostgreSQL: admission (limits, the depth cap, held jobs and their
//! release) and idempotency keys, under per-workspace advisory locks.

use super::*;

impl PgStore {
    pub(super) async fn submit_admitted(
        &self,
        jobs: Vec<NewJob>,
        admission: Admission,
    ) -> Result<Vec<Submitted>, StoreError> {
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

    pub(super) async fn release_held_jobs(&self, defaults: WorkspaceLimits) -> Result<usize, StoreError> {
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
}

/// Locks a job of the workspace for the rest of the transaction and reads its state,
/// attempt, queue and kind; `None` when there is no such job.
pub(super) async fn lock_job(
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
pub(super) async fn in_flight(
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
pub(super) const DEPTH_SLACK: u64 = 4_000;

/// The queue's waiting jobs, counted up to `cap + 1` at most.
pub(super) async fn count_waiting(
    tx: &mut Transaction<'static, Postgres>,
    queue: &str,
    cap: u64,
) -> Result<u64, StoreError> {
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
pub(super) async fn stored_under_keys<'a>(
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
pub(super) async fn resolve_keys(
    tx: &mut Transaction<'static, Postgres>,
    jobs: &[NewJob],
) -> Result<Vec<Resolved>, StoreError> {
    let stored = stored_under_keys(tx, jobs.iter()).await?;
    submission::resolve(jobs, |job, key| Ok(stored.get(&(job.workspace.clone(), key.to_string())).cloned()))
}
