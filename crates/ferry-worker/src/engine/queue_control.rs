//! Queue control: the run-time settings of the queues this process serves, as operators
//! and admins change them in the store (`Store::queue_settings`), applied to its
//! dispatchers.
//!
//! Each served queue has a [`QueueControl`]: its slots (one semaphore permit per attempt
//! that may run at once here), whether it is paused, and a signal for a change of either.
//! [`watch_queues`] reads the settings every `poll_ms` and applies them. A pause needs no
//! haste here: the claim statements read the pause themselves, so it holds from its
//! commit; the dispatcher's `Paused` state only saves claims that would come back empty.
//! A new concurrency resizes the slots: more permits at once, fewer as attempts end.
//! A queue of remote kinds gets its slots from the sessions serving it
//! ([`QueueControl::set_remote_slots`]), within the operator's concurrency.

use super::Inner;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A queue's run-time settings as this process applies them; refreshed from the store
/// every `poll_ms` by [`watch_queues`].
pub(super) struct QueueControl {
    /// The configured concurrency, used when the store says nothing; for a queue of
    /// remote kinds, the slots its sessions bring (see [`crate::remote`]).
    configured: AtomicUsize,
    /// A queue of remote kinds: the operator's concurrency caps its sessions' slots
    /// instead of replacing the configured number.
    remote: bool,
    /// The operator's concurrency, as of the last settings read.
    operator: Mutex<Option<u32>>,
    /// The slots: one permit per attempt that may run at once.
    pub(super) slots: Arc<Semaphore>,
    /// How many permits the semaphore was sized to.
    sized: Mutex<usize>,
    /// Permits a shrink still has to take, and the collector taking them (see
    /// [`QueueControl::resize`]).
    debt: Arc<Mutex<Debt>>,
    paused: AtomicBool,
    /// Notified when the settings change.
    pub(super) changed: Notify,
}

impl QueueControl {
    pub(super) fn new(configured: usize) -> Self {
        QueueControl {
            configured: AtomicUsize::new(configured),
            remote: false,
            operator: Mutex::new(None),
            slots: Arc::new(Semaphore::new(configured)),
            sized: Mutex::new(configured),
            debt: Arc::default(),
            paused: Default::default(),
            changed: Notify::new(),
        }
    }

    /// The control of a queue of remote kinds, with no slots until sessions bring some.
    pub(super) fn remote() -> Self {
        QueueControl { remote: true, ..QueueControl::new(0) }
    }

    /// Whether the queue is paused here (as of the last settings read). A queue of remote
    /// kinds that no session serves here is as paused: it claims nothing, and hands back
    /// the jobs it prefetched for sessions that are gone.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed) || self.remote_slots() == Some(0)
    }

    /// For a queue of remote kinds, its slots now (what its prefetch buffer holds: see
    /// [`super::prefetch`]); `None` for a configured queue.
    pub(super) fn remote_slots(&self) -> Option<usize> {
        self.remote.then(|| *self.sized.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A queue of remote kinds: its sessions now bring `slots`.
    pub(super) fn set_remote_slots(&self, slots: usize) {
        self.configured.store(slots, Ordering::Relaxed);
        self.resize(false);
    }

    fn apply(&self, settings: Option<&ferry_store::QueueSettings>) {
        let paused = settings.is_some_and(|s| s.paused);
        *self.operator.lock().unwrap_or_else(|e| e.into_inner()) = settings.and_then(|s| s.concurrency);
        let changed = self.paused.swap(paused, Ordering::Relaxed) != paused;
        self.resize(changed);
    }

    /// The slots the queue should have: the operator's concurrency, else the configured
    /// one; for remote kinds, their sessions' slots within the operator's concurrency.
    fn target(&self) -> usize {
        let own = self.configured.load(Ordering::Relaxed);
        match (*self.operator.lock().unwrap_or_else(|e| e.into_inner()), self.remote) {
            (None, _) => own,
            (Some(c), false) => c as usize,
            (Some(c), true) => own.min(c as usize),
        }
    }

    /// Sizes the slots to [`QueueControl::target`]: more permits at once (after paying
    /// off what a shrink still owes), fewer as attempts end. A shrink's debt is taken by a
    /// collector that waits for all of it at once, first in the semaphore's line, so the
    /// dispatcher gets no slot of it meanwhile; a change of size replaces the collector
    /// (a grow before the debt is paid forgives it instead of adding permits).
    fn resize(&self, mut changed: bool) {
        let target = self.target();
        let mut sized = self.sized.lock().unwrap_or_else(|e| e.into_inner());
        let mut debt = self.debt.lock().unwrap_or_else(|e| e.into_inner());
        if target > *sized {
            let add = target - *sized;
            let pay = add.min(debt.owed);
            debt.owed -= pay;
            self.slots.add_permits(add - pay);
            if pay > 0 {
                self.collect_again(&mut debt);
            }
            changed = true;
        } else if target < *sized {
            debt.owed += *sized - target;
            self.collect_again(&mut debt);
            changed = true;
        }
        *sized = target;
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Stops the collector (what it took goes back) and starts one for the debt as it is.
    fn collect_again(&self, debt: &mut Debt) {
        debt.generation += 1;
        if let Some(old) = debt.collector.take() {
            old.abort();
        }
        if debt.owed > 0 {
            let task = collect(self.slots.clone(), self.debt.clone(), debt.generation, debt.owed);
            debt.collector = Some(tokio::spawn(task).abort_handle());
        }
    }
}

/// What a shrink still has to take.
#[derive(Default)]
pub(super) struct Debt {
    owed: usize,
    /// Changes with each collector: a collector that finds another number was replaced,
    /// and gives back what it took.
    generation: u64,
    collector: Option<tokio::task::AbortHandle>,
}

/// Takes `owed` permits as attempts end and keeps them, unless it was replaced meanwhile.
async fn collect(slots: Arc<Semaphore>, debt: Arc<Mutex<Debt>>, generation: u64, owed: usize) {
    let Ok(permits) = slots.acquire_many_owned(owed.min(u32::MAX as usize) as u32).await else { return };
    let mut debt = debt.lock().unwrap_or_else(|e| e.into_inner());
    if debt.generation == generation {
        debt.owed -= owed;
        debt.collector = None;
        permits.forget();
    }
}

/// Applies the store's queue settings to this process's dispatchers, every `poll_ms`.
pub(super) async fn watch_queues(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.poll_ms);
    loop {
        match inner.store.queue_settings().await {
            Ok(all) => {
                for (name, control) in inner.controls.iter().chain(inner.remote_controls().iter()) {
                    control.apply(all.iter().find(|s| &s.name == name));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read queue settings; keeping the last ones"),
        }
        tokio::select! {
            _ = tokio::time::sleep(super::spread(every)) => {}
            _ = inner.stop_background.cancelled() => return,
        }
    }
}
