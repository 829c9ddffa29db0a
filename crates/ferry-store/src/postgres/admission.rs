//! Submissions on PostgreSQL: admission (limits, the depth cap, held jobs) and
//! idempotency keys, under per-workspace advisory locks. The decisions are
//! [`crate::submission`]'s; held jobs are released by [`crate::rules::jobs`].

use super::*;

crate::sql::statements!("../../sql/postgres/admission.sql":
    DEPTH_LOCK, HOLD_JOBS, HELD_COUNT, ADMISSION_LOCK, RUNS_IN_FLIGHT, JOBS_IN_FLIGHT, COUNT_WAITING, STORED_UNDER_KEYS,
);

impl PgStore {
    pub(super) async fn submit_admitted(
        &self,
        jobs: Vec<NewJob>,
        admission: Admission,
    ) -> Result<Vec<Submitted>, StoreError> {
        let gated = submission::gated(&admission);
        // An ungated submission reads the clock in its insert, one round trip less, and
        // may run in autocommit until something needs a transaction (see `Session`). What
        // will need one, as far as is known before any statement, starts as one: a batch
        // with keys (undone whole on a conflict) and the leasing of its jobs to this
        // process's idle dispatchers, which runs in the insert's transaction (see
        // [`crate::park`]; a park that appears meanwhile turns the session into one then).
        let queues: BTreeSet<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        let all_or_nothing = jobs.len() > 1 && jobs.iter().any(|j| j.idempotency_key.is_some());
        let (mut session, clock_read) = match (gated, all_or_nothing || self.parks.waiting(&queues)) {
            (true, _) => self.begin().await.map(|(tx, now)| (Session::Tx(tx), Some(now)))?,
            (false, true) => (Session::Tx(self.pool.begin().await?), None),
            (false, false) => (Session::Auto(Some(self.pool.acquire().await?)), None),
        };
        // The batch's idempotency keys, resolved before anything is written where a count
        // needs them (see `crate::submission`): only new jobs count.
        let mut resolved: Option<Vec<Resolved>> = None;
        let mut hold: Option<String> = None;
        if gated && let Some(first) = jobs.first() {
            // Admissions of one workspace take turns, so counts and inserts never race.
            let tx = session.tx(&self.pool).await?;
            let in_flight = in_flight(tx, "jobs", &first.workspace, &first.user).await?;
            let held: i64 = match admission.queue_on_limit {
                true => sqlx::query_scalar(*HELD_COUNT).bind(&first.workspace).fetch_one(&mut **tx).await?,
                false => 0,
            };
            let batch = resolve_keys(tx, &jobs).await?;
            let adding = submission::adding(&jobs, &batch, None);
            resolved = Some(batch);
            hold = submission::hold(&admission, in_flight, adding, held.max(0) as u64)?;
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
            let waiting = count_waiting(session.conn()?, queue, *cap).await?;
            if waiting + most + DEPTH_SLACK <= *cap {
                continue;
            }
            let tx = session.tx(&self.pool).await?;
            sqlx::query(*DEPTH_LOCK).bind(queue).execute(&mut **tx).await?;
            // READ COMMITTED: this statement sees what committed before the lock.
            let waiting = count_waiting(tx, queue, *cap).await?;
            let batch = match resolved.take() {
                Some(batch) => batch,
                None => resolve_keys(tx, &jobs).await?,
            };
            let adding = submission::adding(&jobs, &batch, Some(queue));
            resolved = Some(batch);
            submission::check_depth(queue, *cap, waiting, adding)?;
        }
        // Idle dispatchers of this process lease the new jobs in this very transaction
        // (see [`crate::park`]); a rated queue's claims keep to the rated path. Held jobs
        // are for nobody yet.
        let parks = match hold.is_none() && self.parks.waiting(&queues) {
            false => Vec::new(),
            true => {
                let tx = session.tx(&self.pool).await?;
                let rates = self.rates_on(tx).await?;
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
                    .fetch_all(session.conn()?)
                    .await?
            }
            Some(_) => insert_jobs(session.tx(&self.pool).await?, clock_read, &jobs, &[]).await?,
        };
        // Each new job's state, queue and due time.
        let mut created: HashMap<JobId, (JobState, String, Micros)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let state: String = r.try_get(1)?;
            created.insert(r.try_get(0)?, (parse_enum(&state)?, r.try_get(2)?, r.try_get(3)?));
        }
        // Only a gated submission holds jobs, and it read the clock.
        if let (Some(reason), Some(now)) = (&hold, clock_read) {
            // Held until a slot frees: no worker may see them before. Their events in batch
            // order, as the insert logs a submission's first events.
            let ids: Vec<JobId> = jobs.iter().map(|j| j.id).filter(|id| created.contains_key(id)).collect();
            let tx = session.tx(&self.pool).await?;
            sqlx::query(*HOLD_JOBS).bind(&ids).execute(&mut **tx).await?;
            let mut events = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some((state, queue, _)) = created.get_mut(id) {
                    *state = JobState::Held;
                    let (kind, data) = transition::held_event(queue, reason);
                    events.push((*id, kind, data));
                }
            }
            insert_events(tx, now, events).await?;
        }
        // The answers, from what this session sees now (in autocommit, after the insert's
        // commit): a job the insert skipped has its key stored (by an earlier job of the
        // batch, or by another transaction that committed it first, maybe since the keys
        // were resolved above).
        let stored = stored_under_keys(session.conn()?, jobs.iter().filter(|j| !created.contains_key(&j.id))).await?;
        let resolved = submission::resolve(&jobs, |job, key| match created.contains_key(&job.id) {
            true => Ok(None),
            false => match stored.get(&(job.workspace.clone(), key.to_string())) {
                Some(s) => Ok(Some(s.clone())),
                None => Err(StoreError::Database(format!("job {} was neither inserted nor found", job.id))),
            },
        })?;
        let out = submission::answers(&jobs, &resolved, |id| created[&id].0);
        // This process's watchers of the new jobs hear of their first events (as on
        // SQLite); other processes are not told (see `postgres/events.rs`).
        let logged: Vec<Subject> = created.keys().map(|id| Subject::Job(*id)).collect();
        // Where each queue's new ready jobs start in claim order (see `postgres/head.rs`).
        let mut arrived: HashMap<&str, (i32, Micros)> = HashMap::new();
        for job in &jobs {
            if let Some(&(JobState::Queued, _, run_at)) = created.get(&job.id) {
                let first = arrived.entry(job.queue.as_str()).or_insert((job.priority, run_at));
                *first = (first.0.max(job.priority), first.1.min(run_at));
            }
        }
        let touched: BTreeSet<String> = match hold {
            None => created.into_values().map(|(_, queue, _)| queue).collect(),
            Some(_) => BTreeSet::new(),
        };
        let mut parked = Vec::with_capacity(parks.len());
        for park in parks {
            let claimed = claim_plain(session.conn()?, &park.req, None, false).await;
            parked.push((park, claimed));
        }
        let committed = match parked.iter().any(|(_, c)| c.is_err()) {
            false => session.commit().await,
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
        for (queue, (priority, run_at)) in arrived {
            self.heads.arrived(queue, priority, run_at);
        }
        for queue in &touched - &answered {
            self.wakeups.get(&queue).notify_one();
        }
        self.events.committed(logged);
        // Jobs scheduled for later: this process's claims look for them (see `due.rs`).
        for job in jobs.iter().filter(|j| j.run_at.is_some()) {
            self.due.forget(&job.queue);
        }
        Ok(out)
    }
}

/// Takes the workspace's admission lock for `table` (`runs` or `jobs`) for the rest of the
/// transaction, then counts what `user` and the whole workspace have in flight.
pub(super) async fn in_flight(
    tx: &mut Transaction<'static, Postgres>,
    table: &str,
    workspace: &str,
    user: &str,
) -> Result<(u64, u64), StoreError> {
    sqlx::query(*ADMISSION_LOCK).bind(table).bind(workspace).execute(&mut **tx).await?;
    // One pass over the workspace's part of the index counts both.
    let sql = match table {
        "runs" => *RUNS_IN_FLIGHT,
        _ => *JOBS_IN_FLIGHT,
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
pub(super) async fn count_waiting(conn: &mut sqlx::PgConnection, queue: &str, cap: u64) -> Result<u64, StoreError> {
    let n: i64 =
        sqlx::query_scalar(*COUNT_WAITING).bind(queue).bind(cap.saturating_add(1) as i64).fetch_one(conn).await?;
    Ok(n.max(0) as u64)
}

/// The jobs stored under the idempotency keys of `jobs`, by workspace and key, in one
/// statement (none when no job has a key).
pub(super) async fn stored_under_keys<'a>(
    conn: &mut sqlx::PgConnection,
    jobs: impl Iterator<Item = &'a NewJob>,
) -> Result<HashMap<(String, String), Stored>, StoreError> {
    let (workspaces, keys): (Vec<&str>, Vec<&str>) =
        jobs.filter_map(|j| Some((j.workspace.as_str(), j.idempotency_key.as_deref()?))).unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(*STORED_UNDER_KEYS).bind(&workspaces).bind(&keys).fetch_all(conn).await?;
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
pub(super) async fn resolve_keys(conn: &mut sqlx::PgConnection, jobs: &[NewJob]) -> Result<Vec<Resolved>, StoreError> {
    let stored = stored_under_keys(conn, jobs.iter()).await?;
    submission::resolve(jobs, |job, key| Ok(stored.get(&(job.workspace.clone(), key.to_string())).cloned()))
}

/// Where a submission's statements run. An ungated submission starts in autocommit on one
/// connection: with no depth lock to take and no parked claim to run, its insert (jobs,
/// events and wake-ups in one statement) commits on its own, one round trip where BEGIN,
/// the insert and COMMIT took three. Its statements before the insert only count, under
/// READ COMMITTED as in a transaction, so the counts see the same. Whatever needs the
/// insert's transaction (a lock held to its commit, a parked claim, held jobs) turns it
/// into one first, with [`Session::tx`], before anything is written; one that waits for a
/// park already when the submission starts is a transaction from the start, which spares
/// the autocommit connection's release (sqlx pings it) and a second acquire. A batch of
/// several jobs with an idempotency key among them is one from the start too: a key found in
/// conflict only after the insert (another spec stored under it) must undo the batch's
/// other jobs, since a batch is stored whole or not at all. What follows an autocommitted
/// insert then only reads (the key of its one job, when the insert skipped it) and tells
/// this process: should that fail, the submission answers an error with its jobs stored,
/// which a retry with the same idempotency keys finds (as after a lost answer).
enum Session {
    Tx(Transaction<'static, Postgres>),
    /// Taken (`None`) only on the way to a transaction.
    Auto(Option<sqlx::pool::PoolConnection<Postgres>>),
}

impl Session {
    fn conn(&mut self) -> Result<&mut sqlx::PgConnection, StoreError> {
        match self {
            Session::Tx(tx) => Ok(tx),
            Session::Auto(Some(conn)) => Ok(conn),
            Session::Auto(None) => Err(StoreError::Database("a submission's transaction did not begin".into())),
        }
    }

    /// The transaction, begun now if the session was in autocommit (nothing written yet).
    /// The autocommit connection goes back to the pool first: a submission holds one
    /// connection at a time, so a busy pool cannot leave submissions waiting on each other.
    async fn tx(&mut self, pool: &PgPool) -> Result<&mut Transaction<'static, Postgres>, StoreError> {
        if let Session::Auto(conn) = self {
            drop(conn.take());
            *self = Session::Tx(pool.begin().await?);
        }
        match self {
            Session::Tx(tx) => Ok(tx),
            Session::Auto(_) => Err(StoreError::Database("a submission's transaction did not begin".into())),
        }
    }

    /// Commits a transaction; in autocommit, each statement committed already.
    async fn commit(self) -> Result<(), StoreError> {
        match self {
            Session::Tx(tx) => Ok(tx.commit().await?),
            Session::Auto(_) => Ok(()),
        }
    }
}
