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

use super::Inner;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A queue's run-time settings as this process applies them; refreshed from the store
/// every `poll_ms` by [`watch_queues`].
pub(super) struct QueueControl {
    /// The configured concurrency, used when the store says nothing.
    configured: usize,
    /// The slots: one permit per attempt that may run at once.
    pub(super) slots: Arc<Semaphore>,
    /// How many permits the semaphore was sized to.
    sized: Mutex<usize>,
    paused: AtomicBool,
    /// Notified when the settings change.
    pub(super) changed: Notify,
}

impl QueueControl {
    pub(super) fn new(configured: usize) -> Self {
        QueueControl {
            configured,
            slots: Arc::new(Semaphore::new(configured)),
            sized: Mutex::new(configured),
            paused: Default::default(),
            changed: Notify::new(),
        }
    }

    /// Whether the queue is paused here (as of the last settings read).
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn apply(&self, settings: Option<&ferry_store::QueueSettings>) {
        let paused = settings.is_some_and(|s| s.paused);
        let target = settings.and_then(|s| s.concurrency).map_or(self.configured, |c| c as usize);
        let mut changed = self.paused.swap(paused, Ordering::Relaxed) != paused;
        let mut sized = self.sized.lock().unwrap_or_else(|e| e.into_inner());
        if target > *sized {
            self.slots.add_permits(target - *sized);
            changed = true;
        } else if target < *sized {
            // Fewer slots: take the surplus as attempts end, and keep them.
            let (slots, surplus) = (self.slots.clone(), (*sized - target) as u32);
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
            changed = true;
        }
        *sized = target;
        if changed {
            self.changed.notify_waiters();
        }
    }
}

/// Applies the store's queue settings to this process's dispatchers, every `poll_ms`.
pub(super) async fn watch_queues(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.poll_ms);
    loop {
        match inner.store.queue_settings().await {
            Ok(all) => {
                for (name, control) in &inner.controls {
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
