//! The dispatcher: one task per served queue that claims the queue's jobs and starts their
//! attempts.
//!
//! A dispatcher is a small state machine. Each [`State`] does one thing (claim, start what
//! it holds, wait) and reports what came of it as an [`Event`]; [`next`], and nothing else,
//! decides from that event, and from whether the queue is paused here and whether claiming
//! has stopped, what the dispatcher does next. The waits all end on the stop too, and
//! leave it to [`next`] to notice.
//!
//! ```text
//! state        does                                        event        next
//! ───────────  ──────────────────────────────────────────  ───────────  ─────────────────────
//! Claiming     waits for a free slot, takes every free     Claimed      Starting; HandingBack
//!              slot (up to the claim batch), takes that                 if claiming stopped
//!              many jobs from the prefetch buffer, else    ClaimFailed  Backoff
//!              claims them (and what the buffer lacks);    Ready        ready (stopped, or
//!              starts a refill claim that runs meanwhile                paused or settings
//!                                                                       changed meanwhile)
//! Starting     starts an attempt per job, each holding     Started      Stopped if claiming
//!              one slot while its work runs                             stopped; RateLimited if
//!                                                                       a rate held work back;
//!                                                                       Idle if slots are left;
//!                                                                       else ready
//! Idle         parks a claim for the spare slots, waits    Claimed      Starting (a delivery
//!              for its delivery, a wake-up, the next due                starts even when
//!              time, a change of settings or the stop                   claiming stopped)
//!                                                          Ready        ready
//! RateLimited  waits until a token may be back, a change   Ready        ready
//!              of settings or the stop
//! Paused       hands the prefetched jobs back, waits for   Ready        ready
//!              a change of settings, the poll interval
//!              or the stop
//! Backoff      waits the poll interval or the stop         Ready        ready
//! HandingBack  releases the jobs claimed after the stop    Stop         Stopped
//! Stopped      hands the prefetched jobs back; the
//!              dispatcher ends
//!
//! ready: Stopped if claiming stopped, else Paused if the queue is paused, else Claiming.
//! ```
//!
//! The dispatcher starts as after a `Ready` event. The pause it obeys is this process's
//! copy of the queue's settings ([`super::queue_control`]); the claim statements enforce a
//! pause from its commit anyway, so `Paused` only saves claims that would come back empty
//! and returns the jobs prefetched before the pause (see [`super::prefetch`]).

use super::prefetch::Prefetch;
use super::queue_control::QueueControl;
use super::{Inner, QueueConfig, attempt, finisher};
use ferry_core::time;
use ferry_store::{ClaimRequest, Claimed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// What a dispatcher does next; see the module's table.
enum State {
    /// Waits for a free slot, takes every free slot (up to the claim batch) and claims
    /// that many jobs.
    Claiming,
    /// Starts an attempt per job in hand.
    Starting(Batch),
    /// The queue had fewer ready jobs than free slots: a claim for the spare ones waits
    /// in the store (see `ferry_store::park`) so that the transaction that brings work
    /// leases it at once, while the dispatcher waits for work.
    Idle(Vec<OwnedSemaphorePermit>),
    /// A rate held work back: new jobs bring no tokens, so only time (at most the poll
    /// interval here) or a change of settings can help. Holds no slots.
    RateLimited(Duration),
    /// The queue is paused here: claims nothing until its settings change.
    Paused,
    /// The last claim failed: waits the poll interval before the next.
    Backoff,
    /// Claimed after the stop: hands the jobs back unstarted (`released`).
    HandingBack(Batch),
    /// Claiming stopped: the dispatcher ends.
    Stopped,
}

/// What came of a [`State`], for [`next`] to decide on.
enum Event {
    /// The dispatcher holds nothing and may go on: it just started, or a wait ended
    /// (on the stop too).
    Ready,
    /// A claim returned, or a parked claim delivered, these jobs.
    Claimed(Batch),
    /// The claim failed (the store is unreachable, say); the slots were let go.
    ClaimFailed,
    /// The jobs in hand started.
    Started {
        /// The slots no job took: the queue had fewer ready jobs than free slots.
        spare: Vec<OwnedSemaphorePermit>,
        /// Set when a rate held work back: how long until a token is back.
        rate_wait: Option<Duration>,
    },
    /// The dispatcher must end whatever the flags say: it handed back the jobs it claimed
    /// after the stop, or its slots were closed.
    Stop,
}

/// Jobs in hand, with the slots they were claimed for.
struct Batch {
    claimed: Claimed,
    /// One slot per job claimed for; the first `claimed.jobs.len()` go to the jobs.
    slots: Vec<OwnedSemaphorePermit>,
    /// Delivered by a parked claim: another transaction leased the jobs, and may have
    /// reported them running before the stop, so they start even after it.
    parked: bool,
}

/// Decides what a dispatcher does after `event`, given whether its queue is `paused` here
/// and whether claiming is `stopping`. Every move of the dispatcher goes through here.
fn next(event: Event, paused: bool, stopping: bool) -> State {
    match event {
        Event::Stop => State::Stopped,
        Event::ClaimFailed => State::Backoff,
        Event::Claimed(batch) if stopping && !batch.parked => State::HandingBack(batch),
        Event::Claimed(batch) => State::Starting(batch),
        Event::Ready | Event::Started { .. } if stopping => State::Stopped,
        // A rate held work back: new jobs bring no tokens (and a rated queue's park is
        // never taken), so only time or a change of settings can help.
        Event::Started { rate_wait: Some(wait), .. } => State::RateLimited(wait),
        Event::Started { spare, .. } if !spare.is_empty() => State::Idle(spare),
        Event::Ready | Event::Started { .. } if paused => State::Paused,
        Event::Ready | Event::Started { .. } => State::Claiming,
    }
}

/// Serves `queue` until claiming stops.
pub(super) async fn dispatch(inner: Arc<Inner>, queue: QueueConfig) {
    let control = inner
        .controls
        .get(&queue.name)
        .cloned()
        .or_else(|| inner.remote_controls().get(&queue.name).cloned())
        .unwrap_or_else(|| Arc::new(QueueControl::new(queue.concurrency)));
    let mut dispatcher = Dispatcher {
        wake: inner.store.wakeup(&queue.name),
        poll: Duration::from_millis(inner.cfg.poll_ms),
        prefetch: Prefetch::new(inner.clone(), control.clone()),
        queue: queue.name,
        control,
        inner,
    };
    dispatcher.run().await;
}

/// One queue's dispatcher: what its states need.
struct Dispatcher {
    inner: Arc<Inner>,
    queue: String,
    control: Arc<QueueControl>,
    /// Notified when the queue may have new work.
    wake: Arc<Notify>,
    /// The longest wait without a signal.
    poll: Duration,
    /// Jobs claimed ahead of free slots (see [`super::prefetch`]).
    prefetch: Prefetch,
}

impl Dispatcher {
    async fn run(&mut self) {
        let mut state = self.next(Event::Ready);
        loop {
            let event = match state {
                State::Claiming => self.claim().await,
                State::Starting(batch) => self.start(batch),
                State::Idle(spare) => self.idle(spare).await,
                State::RateLimited(wait) => self.wait(wait.min(self.poll), true).await,
                State::Paused => {
                    // Prefetched jobs have not started: a paused queue starts nothing more.
                    self.prefetch.hand_back().await;
                    self.wait(super::spread(self.poll), true).await
                }
                State::Backoff => self.wait(super::spread(self.poll), false).await,
                State::HandingBack(batch) => self.hand_back(batch).await,
                State::Stopped => {
                    self.prefetch.hand_back().await;
                    return;
                }
            };
            state = self.next(event);
        }
    }

    fn next(&self, event: Event) -> State {
        next(event, self.control.is_paused(), self.inner.stop_claiming.is_cancelled())
    }

    fn request(&self, limit: usize) -> ClaimRequest {
        ClaimRequest {
            queue: self.queue.clone(),
            limit,
            worker: self.inner.worker_id.clone(),
            lease_ms: self.inner.cfg.lease_ms,
        }
    }

    async fn claim(&mut self) -> Event {
        let slots = &self.control.slots;
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Event::Stop,
            },
            _ = self.inner.stop_claiming.cancelled() => return Event::Ready,
            // A pause found while every slot is busy hands the prefetched jobs back now.
            _ = self.control.changed.notified() => return Event::Ready,
        };
        // Paused while waiting for the slot: nothing more starts, prefetched or not.
        if self.control.is_paused() {
            return Event::Ready;
        }
        let mut permits = vec![first];
        while permits.len() < self.inner.cfg.claim_batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let n = permits.len();
        // The buffer first, then the refill already on its way, then a claim of our own
        // for what is still missing plus what the buffer lacks.
        self.prefetch.land_if_done().await;
        let mut jobs = self.prefetch.take(n);
        if jobs.len() < n {
            self.prefetch.land_refill().await;
            jobs.extend(self.prefetch.take(n - jobs.len()));
        }
        let mut rate_wait_ms = None;
        if jobs.len() < n {
            let missing = n - jobs.len();
            let room = self.prefetch.target().saturating_sub(self.prefetch.len());
            let asked = Instant::now();
            match self.inner.store.claim(self.request(missing + room)).await {
                Ok(claimed) => {
                    self.prefetch.timed(asked.elapsed());
                    rate_wait_ms = claimed.rate_wait_ms;
                    let mut got = claimed.jobs;
                    let extra = got.split_off(missing.min(got.len()));
                    jobs.extend(got);
                    self.prefetch.keep(extra);
                }
                Err(e) if jobs.is_empty() => {
                    tracing::warn!(queue = %self.queue, error = %e, "claim failed; will retry");
                    return Event::ClaimFailed;
                }
                Err(e) => tracing::warn!(queue = %self.queue, error = %e, "claim failed; starting what is in hand"),
            }
        }
        self.prefetch.started(jobs.len());
        // The next refill runs while these attempts do; never on a rated queue that held
        // work back (its tokens are for now, not for a buffer), nor for a queue that came
        // back short (it has nothing more).
        if rate_wait_ms.is_none() && jobs.len() == n && !self.inner.stop_claiming.is_cancelled() {
            let req = self.request(0);
            self.prefetch.maybe_refill(req);
        }
        Event::Claimed(Batch { claimed: Claimed { jobs, rate_wait_ms }, slots: permits, parked: false })
    }

    fn start(&self, batch: Batch) -> Event {
        let Batch { claimed, mut slots, parked } = batch;
        let jobs = claimed.jobs;
        if parked && !jobs.is_empty() {
            metrics::counter!("ferry_parked_claims_total", "queue" => self.queue.clone()).increment(jobs.len() as u64);
        }
        let spare = slots.split_off(jobs.len().min(slots.len()));
        // A queue that prefetches has short jobs: their slots go back when the work ends.
        let early = self.prefetch.target() > 0;
        for (job, permit) in jobs.into_iter().zip(slots) {
            if let Some(run) = job.run_id {
                let _ = self.inner.advancer.send(run);
            }
            self.inner.attempts.spawn(attempt::run_attempt(self.inner.clone(), job, permit, early));
        }
        Event::Started { spare, rate_wait: claimed.rate_wait_ms.map(Duration::from_millis) }
    }

    async fn idle(&self, spare: Vec<OwnedSemaphorePermit>) -> Event {
        // Parked first, so that work arriving while the next due time is read finds it.
        let parked = self.inner.store.park(self.request(spare.len()));
        let now = time::now_micros();
        let poll = super::spread(self.poll);
        let wait = match self.inner.store.next_due(&self.queue).await {
            Ok(Some(due)) => Duration::from_micros(due.saturating_sub(now).max(0) as u64).min(poll),
            _ => poll,
        };
        let Some(mut parked) = parked else {
            // A backend that does not park: the slots are free while it waits.
            drop(spare);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.stop_claiming.cancelled() => {}
            }
            return Event::Ready;
        };
        tokio::select! {
            claimed = parked.delivered() => return Event::Claimed(Batch { claimed, slots: spare, parked: true }),
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.control.changed.notified() => {}
            _ = self.inner.stop_claiming.cancelled() => {}
        }
        // A transaction may have taken the claim meanwhile: its jobs are ours to run, when
        // stopping too.
        match parked.withdraw().await {
            Some(claimed) => Event::Claimed(Batch { claimed, slots: spare, parked: true }),
            None => Event::Ready,
        }
    }

    /// Waits `wait`, or less if claiming stops or (`on_change`) the queue's settings
    /// change.
    async fn wait(&self, wait: Duration, on_change: bool) -> Event {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.control.changed.notified(), if on_change => {}
            _ = self.inner.stop_claiming.cancelled() => {}
        }
        Event::Ready
    }

    async fn hand_back(&self, batch: Batch) -> Event {
        for job in &batch.claimed.jobs {
            finisher::release(&self.inner, job).await;
        }
        // The slots go only now, with the jobs back in the store.
        drop(batch);
        Event::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    fn slots(n: u32) -> Vec<OwnedSemaphorePermit> {
        let sem = Arc::new(Semaphore::new(n as usize));
        (0..n).map(|_| sem.clone().try_acquire_owned().unwrap()).collect()
    }

    fn batch(parked: bool) -> Event {
        Event::Claimed(Batch { claimed: Claimed::default(), slots: slots(1), parked })
    }

    fn started(spare: u32, rate_wait_ms: Option<u64>) -> Event {
        Event::Started { spare: slots(spare), rate_wait: rate_wait_ms.map(Duration::from_millis) }
    }

    #[test]
    fn with_nothing_in_hand_it_claims_unless_paused_or_stopping() {
        assert!(matches!(next(Event::Ready, false, false), State::Claiming));
        assert!(matches!(next(Event::Ready, true, false), State::Paused));
        assert!(matches!(next(Event::Ready, true, true), State::Stopped));
        assert!(matches!(next(Event::ClaimFailed, false, false), State::Backoff));
        assert!(matches!(next(Event::Stop, false, false), State::Stopped));
    }

    #[test]
    fn a_claim_after_the_stop_goes_back_but_a_parked_delivery_starts() {
        assert!(matches!(next(batch(false), false, false), State::Starting(_)));
        assert!(matches!(next(batch(false), true, false), State::Starting(_)));
        assert!(matches!(next(batch(false), false, true), State::HandingBack(_)));
        assert!(matches!(next(batch(true), false, true), State::Starting(_)));
    }

    #[test]
    fn after_starting_it_waits_for_a_rate_then_for_work_then_claims_again() {
        assert!(matches!(next(started(0, None), false, false), State::Claiming));
        assert!(matches!(next(started(0, None), true, false), State::Paused));
        assert!(matches!(next(started(2, None), false, false), State::Idle(s) if s.len() == 2));
        assert!(matches!(next(started(2, Some(40)), false, false), State::RateLimited(w) if w.as_millis() == 40));
        assert!(matches!(next(started(2, Some(40)), false, true), State::Stopped));
        assert!(matches!(next(started(0, None), false, true), State::Stopped));
    }
}
