//! Parked claims: a claim that waits in the store for work to arrive.
//!
//! A dispatcher whose claim came back short has free slots and an empty queue. Instead of
//! only sleeping until a wake-up and then claiming in a transaction of its own, it leaves
//! its claim here ([`Store::park`](crate::Store::park)). The next transaction of this
//! process that makes work ready in the queue (a submission, on either backend; on SQLite
//! any write of the group that wakes the queue) takes the parked claim and runs it before
//! it commits, so the new jobs are leased in the transaction that stored them, and hands
//! the leased jobs to the dispatcher after the commit. A job submitted to an idle queue
//! thus starts one transaction (on PostgreSQL, one WAL flush) sooner, and a quiet queue's
//! pickup costs one commit instead of two.
//!
//! The claim run for a park is the backend's ordinary claim, so priority order holds as
//! for any claim. A park stays in place when a rate applies to its queue (a queue rate,
//! or any label rate): that dispatcher is woken as usual and claims through the rated
//! path, which may have to wait for tokens.
//!
//! The delivery is the queue's wake-up: a transaction that ran a queue's parked claims
//! fires no local wake-up for it after the commit (on PostgreSQL its notification carries
//! the store's origin, which that store's own listener skips; other nodes still wake).
//! Otherwise every delivery would be followed by a redundant claim, and a submission
//! arriving during it would find no park.
//!
//! Protocol: whoever takes a park from the registry sends exactly one [`Claimed`] on it,
//! empty if its transaction failed (nothing was leased then). The dispatcher
//! [`withdraw`](Parked::withdraw)s when it stops waiting; if a transaction took the park
//! first, `withdraw` waits for that delivery, so leased jobs are never left behind by a
//! dispatcher that moved on. A `Parked` dropped without `withdraw` (its task aborted)
//! leaves its jobs, if any were delivered, to expire their lease and run again.

use crate::{ClaimRequest, Claimed};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The parked claims of one store, by queue.
#[derive(Default)]
pub(crate) struct Parks {
    by_queue: Mutex<HashMap<String, Vec<Park>>>,
    /// How many are parked: lets a transaction skip the lock when none is.
    count: AtomicUsize,
    next_id: AtomicU64,
}

/// A parked claim, taken by a transaction that will run it.
pub(crate) struct Park {
    id: u64,
    pub(crate) req: ClaimRequest,
    tx: oneshot::Sender<Claimed>,
}

impl Park {
    /// Hands over what the claim leased (empty when its transaction did not commit).
    pub(crate) fn deliver(self, claimed: Claimed) {
        let n = claimed.jobs.len();
        if self.tx.send(claimed).is_err() && n > 0 {
            tracing::warn!(
                park = self.id,
                jobs = n,
                "a parked claim's dispatcher is gone; its jobs wait for their lease to expire"
            );
        }
    }
}

impl Parks {
    pub(crate) fn park(self: &Arc<Self>, req: ClaimRequest) -> Parked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let queue = req.queue.clone();
        let mut map = self.by_queue.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(queue.clone()).or_default().push(Park { id, req, tx });
        self.count.fetch_add(1, Ordering::Relaxed);
        Parked { id, queue, rx, parks: self.clone(), taken: false }
    }

    /// Whether a claim is parked on one of `queues`.
    pub(crate) fn waiting<'a>(&self, queues: impl IntoIterator<Item = &'a String>) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = self.by_queue.lock().unwrap_or_else(|e| e.into_inner());
        queues.into_iter().any(|q| map.contains_key(q.as_str()))
    }

    /// Takes every claim parked on one of `queues` for which `keep` is false.
    pub(crate) fn take<'a>(
        &self,
        queues: impl IntoIterator<Item = &'a String>,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<Park> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut map = self.by_queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for q in queues {
            if keep(q) {
                continue;
            }
            if let Some(parks) = map.remove(q.as_str()) {
                out.extend(parks);
            }
        }
        self.count.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// Removes the park if it is still waiting; `false` when a transaction took it.
    fn remove(&self, queue: &str, id: u64) -> bool {
        let mut map = self.by_queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(parks) = map.get_mut(queue) else { return false };
        let Some(at) = parks.iter().position(|p| p.id == id) else { return false };
        parks.swap_remove(at);
        if parks.is_empty() {
            map.remove(queue);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

/// A dispatcher's handle on its parked claim.
pub struct Parked {
    id: u64,
    queue: String,
    rx: oneshot::Receiver<Claimed>,
    parks: Arc<Parks>,
    /// The delivery was received (or the sender is gone): nothing more will come.
    taken: bool,
}

impl Parked {
    /// Waits until a transaction ran the claim; what it leased (empty if that
    /// transaction failed). Cancel-safe: dropping the future loses nothing.
    pub async fn delivered(&mut self) -> Claimed {
        let claimed = (&mut self.rx).await.unwrap_or_default();
        self.taken = true;
        claimed
    }

    /// Stops waiting. `None` when nothing had taken the claim; otherwise the delivery,
    /// waited for if its transaction is still under way.
    pub async fn withdraw(mut self) -> Option<Claimed> {
        if self.taken || self.parks.remove(&self.queue, self.id) {
            self.taken = true;
            return None;
        }
        Some(self.delivered().await)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if !self.taken {
            self.parks.remove(&self.queue, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(queue: &str, limit: usize) -> ClaimRequest {
        ClaimRequest { queue: queue.into(), limit, worker: "w".into(), lease_ms: 1000 }
    }

    #[tokio::test]
    async fn a_withdrawn_park_is_not_taken() {
        let parks = Arc::new(Parks::default());
        let p = parks.park(req("a", 3));
        assert!(p.withdraw().await.is_none());
        assert!(parks.take([&"a".to_string()], |_| false).is_empty());
        assert_eq!(parks.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_taken_park_is_delivered_even_to_a_withdrawal() {
        let parks = Arc::new(Parks::default());
        let mut first = parks.park(req("a", 3));
        let second = parks.park(req("a", 1));
        let other = parks.park(req("b", 2));
        let taken = parks.take([&"a".to_string()], |_| false);
        assert_eq!(taken.iter().map(|p| p.req.limit).collect::<Vec<_>>(), vec![3, 1]);
        let mut it = taken.into_iter();
        it.next().unwrap().deliver(Claimed { jobs: vec![], rate_wait_ms: Some(7) });
        assert_eq!(first.delivered().await.rate_wait_ms, Some(7));
        // The second's transaction has not delivered yet: the withdrawal waits for it.
        let late = it.next().unwrap();
        let waiting = tokio::spawn(second.withdraw());
        tokio::task::yield_now().await;
        late.deliver(Claimed { jobs: vec![], rate_wait_ms: Some(9) });
        assert_eq!(waiting.await.unwrap().unwrap().rate_wait_ms, Some(9));
        // A queue the filter keeps is left parked.
        assert!(parks.take([&"b".to_string()], |q| q == "b").is_empty());
        drop(other);
        assert!(parks.take([&"b".to_string()], |_| false).is_empty());
        assert_eq!(parks.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_park_whose_taker_failed_delivers_nothing() {
        let parks = Arc::new(Parks::default());
        let p = parks.park(req("a", 3));
        drop(parks.take([&"a".to_string()], |_| false));
        let got = p.withdraw().await.expect("it was taken");
        assert!(got.jobs.is_empty());
    }
}
