//! The writer thread: one group-commit transaction per batch of requests, each request
//! applied in turn (`apply`), parked claims served by the commits that bring them work.

use super::*;

crate::sql::statements!("../../sql/sqlite/writer.sql":
    BEGIN_GROUP, CHECKPOINT_TRUNCATE, SET_QUEUE_SETTINGS, DELETE_LABEL_RATE, INSERT_LABEL_RATE, SET_WORKSPACE_LIMITS,
    UNREGISTER_WORKER, INSERT_TOKEN, CLOSE_AUTH, REVOKE_TOKEN, SET_QUEUE_SHARE, REOPEN,
);

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Cmd>, wakeups: &Wakeups, events: &EventSignal) {
        let mut batch = Vec::with_capacity(64);
        let mut closing: Option<Reply<()>> = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            batch.push(first);
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.now = time::now_micros();
            // A group that cannot begin is poisoned from the start: no request runs.
            let began = self.conn.execute_batch(*BEGIN_GROUP);
            self.poisoned = began.as_ref().err().map(|e| format!("cannot begin a transaction: {e}"));
            let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
            for cmd in batch.drain(..) {
                match cmd {
                    Cmd::Close(reply) => closing = Some(reply),
                    cmd => answers.push(self.apply(cmd)),
                }
            }
            let parked = self.run_parked();
            let outcome = match self.poisoned.take() {
                None => self.conn.execute_batch(*COMMIT).map_err(|e| e.to_string()),
                Some(e) => Err(e),
            };
            if outcome.is_err() {
                let _ = self.conn.execute_batch(*ROLLBACK);
                self.rates = None;
                tracing::error!(error = ?outcome, "SQLite group commit failed");
            }
            metrics::counter!("ferry_store_transactions_total").increment(1);
            metrics::counter!("ferry_store_requests_total").increment(answers.len() as u64);
            // The leased jobs first: their dispatchers start them while the requests are
            // answered.
            let answered: HashSet<String> = parked.iter().map(|(p, _)| p.req.queue.clone()).collect();
            for (park, claimed) in parked {
                park.deliver(if outcome.is_ok() { claimed } else { Claimed::default() });
            }
            for answer in answers {
                answer(outcome.as_ref().err().map(String::as_str));
            }
            let woken = std::mem::take(&mut self.woken);
            let touched = std::mem::take(self.touched.get_mut());
            if outcome.is_ok() {
                // After the commit, so that a woken stream finds the events.
                events.committed(touched);
                // The delivery is the wake-up of a queue whose parked claims ran.
                for queue in woken.iter().filter(|q| !answered.contains(*q)) {
                    wakeups.get(queue).notify_one();
                }
            }
        }
        // Make sure the WAL is folded back into the database file on a clean stop.
        let _ = self.conn.execute_batch(*CHECKPOINT_TRUNCATE);
        if let Some(reply) = closing {
            let _ = reply.send(Ok(()));
        }
    }

    /// Runs, inside the group's transaction, the parked claims of the queues it woke and
    /// no rate applies to (see [`crate::park`]). A claim that fails poisons the group, as
    /// any request's would.
    pub(super) fn run_parked(&mut self) -> Vec<(Park, Claimed)> {
        if self.poisoned.is_some() || !self.parks.waiting(&self.woken) {
            return Vec::new();
        }
        let rates = match self.rates.take() {
            Some(r) => r,
            None => match load_rates(&self.conn) {
                Ok(r) => r,
                Err(e) => {
                    self.poisoned = Some(e.to_string());
                    return Vec::new();
                }
            },
        };
        // As on PostgreSQL, a rated queue's dispatcher is woken and claims on its own.
        let parks = self.parks.take(&self.woken, |q| rates.applies_to(q));
        self.rates = Some(rates);
        let mut out = Vec::with_capacity(parks.len());
        for park in parks {
            let claimed = match &self.poisoned {
                Some(_) => Claimed::default(),
                None => self.claim(&park.req).unwrap_or_else(|e| {
                    self.poisoned = Some(e.to_string());
                    Claimed::default()
                }),
            };
            out.push((park, claimed));
        }
        if let Err(e) = self.flush_events() {
            self.poisoned = Some(e.to_string());
        }
        out
    }

    /// Runs one request of the group and returns how to answer it once the transaction's
    /// fate is known.
    pub(super) fn apply(&mut self, cmd: Cmd) -> Answer {
        match cmd {
            Cmd::Submit(jobs, admission, reply) => self.step(reply, |w| w.submit(jobs, admission)),
            Cmd::SetQueue(q, reply) => self.step(reply, |w| {
                w.conn.prepare_cached(*SET_QUEUE_SETTINGS)?.execute(params![
                    q.name,
                    q.concurrency,
                    q.max_depth.map(|d| d as i64),
                    q.rate,
                    q.paused,
                    w.now
                ])?;
                w.rates = None;
                Ok(())
            }),
            Cmd::SetLabelRate(ws, label, rate, reply) => self.step(reply, |w| {
                let existed = w.conn.prepare_cached(*DELETE_LABEL_RATE)?.execute(params![ws, label])? > 0;
                if let Some(rate) = rate {
                    w.conn.prepare_cached(*INSERT_LABEL_RATE)?.execute(params![ws, label, rate, w.now])?;
                }
                w.rates = None;
                Ok(existed)
            }),
            Cmd::SetLimits(ws, limits, reply) => self.step(reply, |w| {
                let text = serde_json::to_string(&limits).map_err(|e| StoreError::Database(e.to_string()))?;
                w.conn.prepare_cached(*SET_WORKSPACE_LIMITS)?.execute(params![ws, text, w.now])?;
                Ok(())
            }),
            Cmd::Claim(req, reply) => self.step(reply, |w| w.claim(&req)),
            Cmd::Breaker(key, op, reply) => self.step(reply, |w| w.breaker(&key, op)),
            Cmd::OrderRelease(ws, key, reply) => self.step(reply, |w| w.order_release(&ws, &key)),
            Cmd::Escalate(firing, reply) => self.step(reply, |w| w.escalate(*firing)),
            Cmd::With(f) => f(self),
            Cmd::FinishMany(fins, reply) => self.step(reply, |w| w.finish_many(&fins)),
            Cmd::Heartbeat(worker, lease_ms, running, reply) => {
                self.step(reply, |w| w.heartbeat(&worker, lease_ms, &running))
            }
            Cmd::RegisterWorker(info, reply) => self.step(reply, |w| w.register_worker(&info)),
            Cmd::UnregisterWorker(id, reply) => self.step(reply, |w| {
                w.conn.prepare_cached(*UNREGISTER_WORKER)?.execute(params![id])?;
                Ok(())
            }),
            Cmd::Prune(older_than_ms, limit, reply) => self.step(reply, |w| w.prune(older_than_ms, limit)),
            Cmd::Cancel(ws, id, reply) => self.step(reply, |w| rules::ready(rules::jobs::cancel(&mut w.tx(), &ws, id))),
            Cmd::Replay(ws, id, reply) => self.step(reply, |w| rules::ready(rules::jobs::replay(&mut w.tx(), &ws, id))),
            Cmd::Delete(ws, id, reply) => self.step(reply, |w| rules::ready(rules::jobs::delete(&mut w.tx(), &ws, id))),
            Cmd::PutWorkflow(ws, user, name, def, reply) => {
                self.step(reply, |w| w.put_workflow(&ws, &user, &name, &def))
            }
            Cmd::CreateRun(run, planner, reply) => {
                self.step(reply, |w| rules::ready(rules::runs::create(&mut w.tx(), *run, &planner)))
            }
            Cmd::AdvanceRuns(list, planner, reply) => self.step(reply, |w| {
                let mut all = Advanced::default();
                for id in &list {
                    all.merge(rules::ready(rules::runs::advance(&mut w.tx(), *id, &planner))?);
                }
                Ok(all)
            }),
            Cmd::CancelRun(ws, id, planner, reply) => {
                self.step(reply, |w| rules::ready(rules::runs::cancel(&mut w.tx(), &ws, id, &planner)))
            }
            Cmd::ReleaseRuns(defaults, planner, reply) => self.step(reply, |w| {
                let mut all = Advanced::default();
                for ws in w.workspaces_with_queued_runs()? {
                    all.merge(rules::ready(rules::runs::release_queued(&mut w.tx(), &ws, &defaults, &planner))?);
                }
                Ok(all)
            }),
            Cmd::ReleaseJobs(defaults, reply) => self.step(reply, |w| {
                let mut released = 0;
                for ws in w.workspaces_with_held_jobs()? {
                    released += rules::ready(rules::jobs::release_held(&mut w.tx(), &ws, &defaults))?;
                }
                Ok(released)
            }),
            Cmd::CreateToken(t, reply) => self.step(reply, |w| {
                w.conn.prepare_cached(*INSERT_TOKEN)?.execute(params![
                    t.id,
                    t.workspace,
                    t.user,
                    t.role.as_str(),
                    t.hash,
                    w.now
                ])?;
                // From the first token on, the store stays closed (see `Store::auth_closed`).
                w.conn.prepare_cached(*CLOSE_AUTH)?.execute([])?;
                Ok(TokenRecord {
                    id: t.id,
                    workspace: t.workspace,
                    user: t.user,
                    role: t.role,
                    created_at: w.now,
                    revoked_at: None,
                })
            }),
            Cmd::RevokeToken(ws, id, reply) => self.step(reply, |w| {
                let n = w.conn.prepare_cached(*REVOKE_TOKEN)?.execute(params![id, ws, w.now])?;
                Ok(n == 1)
            }),
            Cmd::SetShare(share, reply) => self.step(reply, |w| {
                w.conn.prepare_cached(*SET_QUEUE_SHARE)?.execute(params![
                    share.queue,
                    share.workspace,
                    share.paused,
                    share.rate,
                    w.now
                ])?;
                w.rates = None;
                if !share.paused {
                    // Resumed jobs are ready work: wake the queue (and run its parked claims).
                    w.woken.insert(share.queue.clone());
                }
                Ok(())
            }),
            Cmd::Reopen(reply) => self.step(reply, |w| {
                let active: i64 = w.conn.prepare_cached(*ACTIVE_TOKENS)?.query_row([], |r| r.get(0))?;
                if active > 0 {
                    return Ok(ReopenOutcome::TokensRemain(active as u64));
                }
                let n = w.conn.prepare_cached(*REOPEN)?.execute([])?;
                Ok(if n == 1 { ReopenOutcome::Reopened } else { ReopenOutcome::AlreadyOpen })
            }),
            Cmd::Close(_) => unreachable!("handled by the loop"),
        }
    }

    pub(super) fn step<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Answer {
        // No savepoint per request: SQLite copies every page a savepoint touches into a
        // sub-journal, which doubled the cost of a claim. Instead a request either fails
        // before it writes anything (an idempotency conflict is checked first), or its
        // failure is a database error that poisons the whole group, which is rolled back
        // and answered with that error. Once the group is poisoned, later requests do not
        // run at all: they would be rolled back anyway.
        let result = match &self.poisoned {
            Some(e) => Err(StoreError::Database(e.clone())),
            None => {
                let result = f(self);
                // The request's events are written before the next request runs, whatever
                // it answers; a failure to write them poisons the group.
                match self.flush_events() {
                    Ok(()) => result,
                    Err(e) => Err(e.into()),
                }
            }
        };
        if let Err(e) = &result
            && !matches!(
                e,
                StoreError::IdempotencyConflict { .. }
                    | StoreError::LimitReached(_)
                    | StoreError::QueueFull { .. }
                    | StoreError::TokenBudget { .. }
            )
        {
            self.poisoned = Some(e.to_string());
        }
        Box::new(move |group_error| {
            let _ = reply.send(match group_error {
                Some(e) => Err(StoreError::Database(format!("transaction failed: {e}"))),
                None => result,
            });
        })
    }

    /// Notes that the transaction wrote to a job's or a run's log, if any stream watches.
    pub(super) fn touched(&self, subject: Subject) {
        self.touched.borrow_mut().push(subject);
    }
}

/// The writer thread's state for one group-commit transaction.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Queues whose dispatchers should look again once this transaction commits.
    pub(super) woken: HashSet<String>,
    /// The transaction's clock: one timestamp for everything it writes.
    pub(super) now: Micros,
    /// A request of this group failed with a database error: roll the group back.
    pub(super) poisoned: Option<String>,
    /// Every rate in force, as of the last read (`None`: read again before the next claim,
    /// after a change or a rolled-back group).
    pub(super) rates: Option<Rates>,
    /// Claims waiting for work (see [`crate::park`]), run by the group that wakes their queue.
    pub(super) parks: Arc<Parks>,
    /// The jobs and runs whose logs this transaction wrote: their event streams are
    /// woken once it commits.
    pub(super) touched: RefCell<Vec<Subject>>,
    /// Events noted and not yet written (see [`super::log`]).
    pub(super) noted: RefCell<Vec<super::log::Noted>>,
}

pub(super) type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

impl SqliteStore {
    /// Runs `f` on the writer, in its next group's transaction.
    pub(super) async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(|reply| Cmd::With(Box::new(move |w: &mut Writer| w.step(reply, f)))).await
    }
}
