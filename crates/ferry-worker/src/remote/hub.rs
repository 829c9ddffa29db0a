//! The hub: where this process's remote attempts meet the sessions of remote workers.
//!
//! All of it is one lock over the sessions and the offers: every operation is a few map
//! moves, and none awaits while holding it. The engine learns each queue's slots from
//! [`Hub::capacity`] through the callback it attaches.

use ferry_core::{ErrorType, ExecError, JobId};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// What a session answered for an attempt.
#[derive(Debug)]
pub enum Outcome {
    Output(Value),
    Error(ExecError),
    /// Not run: the job is queued again and the attempt does not count.
    Release,
}

/// A job as a session leases it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LeasedJob {
    #[schema(value_type = String)]
    pub id: JobId,
    /// The fencing token: every later call about the job names it.
    pub attempt: u32,
    pub kind: String,
    pub queue: String,
    pub workspace: String,
    #[schema(value_type = Option<String>)]
    pub run: Option<ferry_core::run::RunId>,
    /// The job's whole input (a claim-checked one already read back).
    pub input: Value,
    /// The attempt's hard timeout, counted by the node from when it started the attempt:
    /// the node fails the attempt at this point.
    pub timeout_ms: u64,
    pub soft_timeout_ms: Option<u64>,
}

/// An attempt a session must stop.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cancel {
    #[schema(value_type = String)]
    pub id: JobId,
    pub attempt: u32,
    /// `cancelled` (a user, its run, a lost lease or a stop) or `timeout`.
    pub reason: &'static str,
}

/// A live session, for listings.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub session: String,
    pub name: Option<String>,
    pub concurrency: usize,
    /// Kind → queue.
    pub kinds: BTreeMap<String, String>,
    /// Attempts the session holds now.
    pub running: usize,
}

/// Why the hub refused a call.
#[derive(Debug, PartialEq, Eq)]
pub enum HubError {
    /// No such session here (it ended, or lives on another node).
    UnknownSession,
    /// The attempt wrote as many events as it may.
    EventLimit,
}

/// The most events (progress and log lines) one attempt may write.
pub const MAX_EVENTS_PER_ATTEMPT: u32 = 1000;

/// How long a `complete` that leases waits, once it has a job, for the rest of the jobs
/// its results made room for (see [`Hub::lease`]).
pub const LINGER: Duration = Duration::from_millis(2);

/// The hub's settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// This node's name, leading session ids.
    pub node: String,
    /// A session that makes no call for this long is over.
    pub session_timeout: Duration,
    /// How often sessions should heartbeat.
    pub heartbeat: Duration,
    /// The longest a lease call waits for work.
    pub max_wait: Duration,
}

type Key = (JobId, u32);

struct Offer {
    job: LeasedJob,
    reply: oneshot::Sender<Outcome>,
}

struct Held {
    reply: oneshot::Sender<Outcome>,
    events: u32,
}

struct Session {
    name: Option<String>,
    concurrency: usize,
    kinds: BTreeMap<String, String>,
    seen: Instant,
    /// Lease calls waiting now: a session waiting for work is alive.
    waiting: usize,
    /// The number of the session's latest lease call: an earlier one still waiting ends
    /// with no jobs (a session has one lease call waiting at most).
    lease_call: u64,
    held: HashMap<Key, Held>,
    cancels: Vec<Cancel>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    offers: VecDeque<Offer>,
    /// Each queue's slots as last told to the engine.
    capacity: HashMap<String, usize>,
}

/// What the hub tells of a queue's new number of slots.
type SlotsChanged = Box<dyn Fn(&str, usize) + Send + Sync>;

/// See the module docs.
pub struct Hub {
    cfg: HubConfig,
    state: Mutex<State>,
    /// Notified when an offer arrives.
    offered: Notify,
    /// Told each queue's new number of slots.
    on_capacity: SlotsChanged,
}

impl Hub {
    pub fn new(cfg: HubConfig, on_capacity: impl Fn(&str, usize) + Send + Sync + 'static) -> Arc<Hub> {
        Arc::new(Hub { cfg, state: Mutex::default(), offered: Notify::new(), on_capacity: Box::new(on_capacity) })
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session serving `kinds` (kind → queue) with `concurrency` slots; its id.
    pub fn open(&self, name: Option<String>, concurrency: usize, kinds: BTreeMap<String, String>) -> String {
        let id = format!("{}-{}", self.cfg.node, uuid::Uuid::now_v7().simple());
        let session = Session {
            name,
            concurrency,
            kinds,
            seen: Instant::now(),
            waiting: 0,
            lease_call: 0,
            held: HashMap::new(),
            cancels: Vec::new(),
        };
        let changed = {
            let mut st = self.lock();
            st.sessions.insert(id.clone(), session);
            recount(&mut st)
        };
        self.tell(changed);
        id
    }

    /// Ends a session: the attempts it holds fail with `worker_lost`; jobs offered that no
    /// session serves any more go back.
    pub fn close(&self, session: &str) -> Result<(), HubError> {
        let changed = {
            let mut st = self.lock();
            let gone = st.sessions.remove(session).ok_or(HubError::UnknownSession)?;
            lose(gone, "closed its session");
            recount(&mut st)
        };
        self.tell(changed);
        Ok(())
    }

    /// Ends the sessions that made no call for the session timeout; how many.
    pub fn expire(&self) -> usize {
        let timeout = self.cfg.session_timeout;
        let (n, changed) = {
            let mut st = self.lock();
            let dead: Vec<String> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.waiting == 0 && s.seen.elapsed() > timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &dead {
                if let Some(gone) = st.sessions.remove(id) {
                    tracing::warn!(session = %id, "a remote worker's session timed out");
                    lose(gone, "stopped answering");
                }
            }
            (dead.len(), recount(&mut st))
        };
        self.tell(changed);
        n
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let st = self.lock();
        let mut all: Vec<SessionInfo> = st
            .sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                session: id.clone(),
                name: s.name.clone(),
                concurrency: s.concurrency,
                kinds: s.kinds.clone(),
                running: s.held.len(),
            })
            .collect();
        all.sort_by(|a, b| a.session.cmp(&b.session));
        all
    }

    /// Offers an attempt to the sessions; the answer comes on the receiver. The returned
    /// guard withdraws the attempt when dropped before the answer.
    pub(crate) fn offer(
        self: &Arc<Self>,
        attempt: &crate::Attempt,
        input: Value,
    ) -> (Withdraw, oneshot::Receiver<Outcome>) {
        let job = LeasedJob {
            id: attempt.job_id,
            attempt: attempt.number,
            kind: attempt.kind.clone(),
            queue: attempt.queue.clone(),
            workspace: attempt.workspace.clone(),
            run: attempt.run,
            input,
            timeout_ms: attempt.timeout.as_millis() as u64,
            soft_timeout_ms: attempt.soft_timeout.map(|t| t.as_millis() as u64),
        };
        let answer = self.put(job);
        let guard = Withdraw {
            hub: Arc::downgrade(self),
            key: (attempt.job_id, attempt.number),
            deadline: attempt.started + attempt.timeout,
        };
        (guard, answer)
    }

    /// Puts `job` among the offers and wakes the lease calls waiting for one.
    fn put(&self, job: LeasedJob) -> oneshot::Receiver<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.lock().offers.push_back(Offer { job, reply });
        self.offered.notify_waiters();
        answer
    }

    /// Leases up to `max` offered jobs of the session's kinds (never past its free
    /// slots), waiting up to `wait` for the first.
    ///
    /// `expect`: how many slots of the engine the call's own results just freed (a
    /// `complete` that leases). Their next jobs are on their way to being offered (the
    /// attempts end, the dispatcher starts the next ones), so once the call has a job it
    /// waits up to [`LINGER`] for that many before answering, rather than answering a busy
    /// worker with part of a batch and taking a round trip per job. A plain lease
    /// (`expect` 0) answers as soon as it has a job and the others offered with it.
    pub async fn lease(
        &self,
        session: &str,
        max: usize,
        wait: Duration,
        expect: usize,
    ) -> Result<Vec<LeasedJob>, HubError> {
        let until = tokio::time::Instant::now() + wait.min(self.cfg.max_wait);
        let mut linger_until = None;
        // Counts the call as waiting until it ends, dropped with it too: a client that
        // hangs up leaves its session to time out like any other.
        let mut waiting: Option<Waiting<'_>> = None;
        let mut call = 0;
        let mut jobs = Vec::new();
        let mut lingered = false;
        loop {
            let notified = self.offered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let room = {
                let mut st = self.lock();
                let State { sessions, offers, .. } = &mut *st;
                let s = sessions.get_mut(session).ok_or(HubError::UnknownSession)?;
                s.seen = Instant::now();
                if waiting.is_none() {
                    s.waiting += 1;
                    s.lease_call += 1;
                    call = s.lease_call;
                    waiting = Some(Waiting { hub: self, session });
                    // An earlier call still waiting ends now, with nothing.
                    self.offered.notify_waiters();
                } else if s.lease_call != call {
                    // A newer call ends this one, with what it took already (held by the
                    // session now: it must reach the worker).
                    return Ok(jobs);
                }
                let room = max.saturating_sub(jobs.len()).min(s.concurrency.saturating_sub(s.held.len()));
                let want = jobs.len() + room;
                let mut i = 0;
                while jobs.len() < want && i < offers.len() {
                    if s.kinds.get(&offers[i].job.kind) == Some(&offers[i].job.queue) {
                        let Some(offer) = offers.remove(i) else { break };
                        if offer.reply.is_closed() {
                            continue;
                        }
                        s.held.insert((offer.job.id, offer.job.attempt), Held { reply: offer.reply, events: 0 });
                        jobs.push(offer.job);
                    } else {
                        i += 1;
                    }
                }
                want - jobs.len()
            };
            // Some jobs: once the attempts started with them have had a moment to offer
            // theirs (a claim starts a batch at once), answer with all of them.
            if !jobs.is_empty() {
                if room == 0 {
                    return Ok(jobs);
                }
                if jobs.len() < expect {
                    let linger = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
                    if tokio::time::Instant::now() < linger {
                        tokio::select! {
                            _ = notified => {}
                            _ = tokio::time::sleep_until(linger) => {}
                        }
                        continue;
                    }
                }
                if lingered || linger_until.is_some() {
                    return Ok(jobs);
                }
                lingered = true;
                tokio::task::yield_now().await;
                continue;
            }
            if tokio::time::Instant::now() >= until {
                return Ok(jobs);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Keeps the session alive; the attempts it must stop, each named once.
    pub fn heartbeat(&self, session: &str) -> Result<Vec<Cancel>, HubError> {
        let mut st = self.lock();
        let s = st.sessions.get_mut(session).ok_or(HubError::UnknownSession)?;
        s.seen = Instant::now();
        Ok(std::mem::take(&mut s.cancels))
    }

    /// Answers an attempt the session holds; whether it was still its own.
    pub fn complete(&self, session: &str, id: JobId, attempt: u32, outcome: Outcome) -> Result<bool, HubError> {
        let held = {
            let mut st = self.lock();
            let s = st.sessions.get_mut(session).ok_or(HubError::UnknownSession)?;
            s.seen = Instant::now();
            s.held.remove(&(id, attempt))
        };
        if held.is_some() {
            // A slot of the session is free: a lease call waiting for one may take an offer.
            self.offered.notify_waiters();
        }
        // A closed receiver: the attempt stopped meanwhile; its end is not this answer.
        Ok(held.is_some_and(|h| h.reply.send(outcome).is_ok()))
    }

    /// Counts events the session wants to write for an attempt it holds: `Ok(false)` when
    /// it does not hold it, `EventLimit` past [`MAX_EVENTS_PER_ATTEMPT`].
    pub fn note_events(&self, session: &str, id: JobId, attempt: u32, n: u32) -> Result<bool, HubError> {
        let mut st = self.lock();
        let s = st.sessions.get_mut(session).ok_or(HubError::UnknownSession)?;
        s.seen = Instant::now();
        let Some(held) = s.held.get_mut(&(id, attempt)) else { return Ok(false) };
        if held.reply.is_closed() {
            return Ok(false);
        }
        if held.events + n > MAX_EVENTS_PER_ATTEMPT {
            return Err(HubError::EventLimit);
        }
        held.events += n;
        Ok(true)
    }

    /// An attempt the engine stopped: out of the offers, or named to its session.
    fn withdraw(&self, key: Key, reason: &'static str) {
        let mut st = self.lock();
        if let Some(i) = st.offers.iter().position(|o| (o.job.id, o.job.attempt) == key) {
            st.offers.remove(i);
            return;
        }
        for s in st.sessions.values_mut() {
            if s.held.remove(&key).is_some() {
                s.cancels.push(Cancel { id: key.0, attempt: key.1, reason });
                return;
            }
        }
    }

    fn tell(&self, changed: Vec<(String, usize)>) {
        for (queue, slots) in changed {
            (self.on_capacity)(&queue, slots);
        }
    }
}

/// Recounts each queue's slots after the sessions changed; hands back the offers no
/// session serves any more. Returns the queues whose slots changed.
fn recount(st: &mut State) -> Vec<(String, usize)> {
    let mut now: HashMap<String, usize> = HashMap::new();
    for s in st.sessions.values() {
        let queues: std::collections::BTreeSet<&String> = s.kinds.values().collect();
        for q in queues {
            *now.entry(q.clone()).or_default() += s.concurrency;
        }
    }
    let mut changed = Vec::new();
    for (q, slots) in &now {
        if st.capacity.get(q) != Some(slots) {
            changed.push((q.clone(), *slots));
        }
    }
    for q in st.capacity.keys() {
        if !now.contains_key(q) {
            changed.push((q.clone(), 0));
        }
    }
    // An offer whose queue no session serves goes back, uncounted, to wait in the store.
    let (keep, back): (VecDeque<Offer>, VecDeque<Offer>) =
        std::mem::take(&mut st.offers).into_iter().partition(|o| now.contains_key(&o.job.queue));
    st.offers = keep;
    for o in back {
        let _ = o.reply.send(Outcome::Release);
    }
    st.capacity = now;
    changed
}

/// A lease call of a session, counted as waiting until it ends or is dropped.
struct Waiting<'a> {
    hub: &'a Hub,
    session: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.hub.lock().sessions.get_mut(self.session) {
            s.waiting -= 1;
            s.seen = Instant::now();
        }
    }
}

/// A session is gone: what it held failed with `worker_lost`.
fn lose(gone: Session, how: &str) {
    for (_, held) in gone.held {
        let e = ExecError::new(ErrorType::WorkerLost, format!("the remote worker {how}")).retryable(true);
        let _ = held.reply.send(Outcome::Error(e));
    }
}

/// Withdraws its attempt from the hub when dropped (see [`Hub::offer`]).
pub(crate) struct Withdraw {
    hub: Weak<Hub>,
    key: Key,
    /// When the attempt's timeout ends: a withdrawal from then on is the timeout's.
    deadline: Instant,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let reason = if Instant::now() >= self.deadline { "timeout" } else { "cancelled" };
            hub.withdraw(self.key, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        let cfg = HubConfig {
            node: "node".into(),
            session_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
        };
        Hub::new(cfg, |_, _| {})
    }

    fn session(hub: &Hub, concurrency: usize) -> String {
        hub.open(None, concurrency, BTreeMap::from([("k".to_string(), "remote".to_string())]))
    }

    /// Offers job `n` of kind `k`, as its attempt does when it starts; the receiver is
    /// the attempt's end.
    fn offer(hub: &Hub, n: u128) -> oneshot::Receiver<Outcome> {
        hub.put(LeasedJob {
            id: JobId::from_u128(n),
            attempt: 1,
            kind: "k".into(),
            queue: "remote".into(),
            workspace: "default".into(),
            run: None,
            input: Value::Null,
            timeout_ms: 60_000,
            soft_timeout_ms: None,
        })
    }

    /// Lets every other task run as far as it can, without the paused clock moving.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_that_leases_waits_for_the_jobs_its_results_made_room_for() {
        let hub = hub();
        let s = session(&hub, 3);
        let _first = offer(&hub, 1);
        let (h, id) = (hub.clone(), s.clone());
        let call = tokio::spawn(async move { h.lease(&id, 3, Duration::from_secs(10), 3).await });
        settle().await;
        // It has one job, and waits for the two more its results made room for.
        assert!(!call.is_finished());
        let (_second, _third) = (offer(&hub, 2), offer(&hub, 3));
        let jobs = call.await.unwrap().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), (1..=3).map(JobId::from_u128).collect::<Vec<_>>());
    }

    /// A lease of up to 3 jobs with one offered, `expect` as given: how many it answered
    /// with, and how long it took on the paused clock (which moves only to the next timer).
    async fn lease_with_one_offered(expect: usize) -> (usize, Duration) {
        let hub = hub();
        let s = session(&hub, 3);
        let _only = offer(&hub, 1);
        let t0 = tokio::time::Instant::now();
        let jobs = hub.lease(&s, 3, Duration::from_secs(10), expect).await.unwrap();
        (jobs.len(), t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_the_rest_of_a_batch_is_bounded() {
        // The linger's end, not the wait's.
        assert_eq!(lease_with_one_offered(3).await, (1, LINGER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_lease_answers_with_what_is_offered() {
        assert_eq!(lease_with_one_offered(0).await, (1, Duration::ZERO));
    }
}
