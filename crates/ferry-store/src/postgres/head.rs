//! Where a deep queue's waiting jobs begin, as this process knows it, so that a claim
//! starts there instead of walking past every job claimed before.
//!
//! A claim takes the first waiting jobs in claim order from the partial index `jobs_ready`.
//! Each job it takes leaves a dead entry at the head of that index until a vacuum, and
//! every later scan reads past them: draining a million waiting jobs at the default
//! concurrency, a claim of ten read over a thousand index pages after 100,000 claims, and
//! the drain ran at half the speed of a shallow queue. (A vacuum clears them but reads
//! every index whole, and one without fresh statistics flipped the claim to a plan that
//! sorted every waiting job: measured and dropped, see BENCHMARKS.md.)
//!
//! So a claim that came back full leaves its last job's key here (priority, due time, id:
//! the index's order), and the next claim of the queue asks for jobs of that priority
//! after it (`claim.sql` with its `{after}` condition), an index range that starts past
//! the dead entries. A claim from the head that comes back short is completed at once by
//! one over the whole queue (a lower priority, or a job before the head), so a head never
//! makes a queue look empty.
//!
//! What is known is forgotten whenever a job may have become ready before the head:
//! - a submission, on any node, whose jobs come first (a higher priority, or the head's
//!   priority and an earlier due time), or any submission while no head is known (a claim
//!   under way may not have seen it): the wake-up of a submission carries its jobs'
//!   highest priority and earliest due time (`submit_tail.sql`);
//! - any other wake-up of the queue, from this process or another (a hand-back, a replay,
//!   a held job released, a queue resumed: these carry no keys), a promotion of due jobs by
//!   this process, and a lost notification connection.
//!
//! Whatever slips past these (a job another claim had locked and then gave back, say) is
//! only out of order, never lost: what is known holds for [`FRESH_FOR`] after the last
//! claim over the whole queue, and such a claim takes it. A claim begun before a forget is
//! not kept after it (it may not have seen the job that made the forget).

use ferry_core::{JobId, time::Micros};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a head holds after the last claim over the whole queue.
pub(super) const FRESH_FOR: Duration = Duration::from_millis(250);

/// A job's place in claim order (`jobs_ready`: priority descending, then due time, then id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) priority: i32,
    pub(super) run_at: Micros,
    pub(super) id: JobId,
}

#[derive(Default)]
pub(super) struct Heads(Mutex<HashMap<String, Queue>>);

#[derive(Default)]
struct Queue {
    head: Option<Head>,
    /// Moved on by every forget.
    generation: u64,
}

struct Head {
    key: Key,
    /// When a claim over the whole queue last ended at or before this key.
    checked: Instant,
}

/// What a claim started from, handed back to [`Heads::claimed`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    pub(super) after: Option<Key>,
    generation: u64,
}

impl Heads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a claim of `queue` starts: after the head when one is known and fresh.
    pub(super) fn start(&self, queue: &str) -> Ticket {
        let mut map = self.lock();
        let q = map.entry(queue.to_string()).or_default();
        let after = q.head.as_ref().filter(|h| h.checked.elapsed() < FRESH_FOR).map(|h| h.key);
        Ticket { after, generation: q.generation }
    }

    /// A claim ended: `last` is the key of its last job when it came back full (more may
    /// wait), `None` when short; `whole` whether it looked at the whole queue.
    pub(super) fn claimed(&self, queue: &str, ticket: Ticket, whole: bool, last: Option<Key>) {
        let mut map = self.lock();
        let q = map.entry(queue.to_string()).or_default();
        if q.generation != ticket.generation {
            return;
        }
        q.head = match (last, whole) {
            (None, _) => None,
            (Some(key), true) => Some(Head { key, checked: Instant::now() }),
            (Some(key), false) => q.head.take().map(|h| Head { key, checked: h.checked }),
        };
    }

    /// A job of `queue` became ready with no key known.
    pub(super) fn forget(&self, queue: &str) {
        self.lock().entry(queue.to_string()).or_default().forget();
    }

    /// As [`Heads::forget`], for every queue.
    pub(super) fn forget_all(&self) {
        self.lock().values_mut().for_each(Queue::forget);
    }

    /// Jobs of `queue` became ready, the first of them in claim order at `priority` and
    /// `run_at` at the earliest: forgets the head if they may come before it. With no head
    /// known it forgets too: a claim over the whole queue under way may have begun before
    /// they were there, and must not leave a head past them.
    pub(super) fn arrived(&self, queue: &str, priority: i32, run_at: Micros) {
        let mut map = self.lock();
        let q = map.entry(queue.to_string()).or_default();
        let before = match &q.head {
            Some(h) => priority > h.key.priority || (priority == h.key.priority && run_at <= h.key.run_at),
            None => true,
        };
        if before {
            q.forget();
        }
    }
}

impl Queue {
    /// Drops the head, and the result of every claim under way.
    fn forget(&mut self) {
        self.generation += 1;
        self.head = None;
    }
}

/// What a wake-up on the queues' channel says (see `submit_tail.sql`): `queue`, then
/// optionally the origin of a store that ran the queue's parked claims in the same
/// transaction (empty if none), then, for a submission's ready jobs, their highest
/// priority and earliest due time.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Wakeup<'a> {
    pub(super) queue: &'a str,
    pub(super) origin: Option<&'a str>,
    pub(super) arrived: Option<(i32, Micros)>,
}

impl<'a> Wakeup<'a> {
    pub(super) fn parse(payload: &'a str) -> Self {
        let mut parts = payload.split('\n');
        let queue = parts.next().unwrap_or_default();
        let origin = parts.next().filter(|o| !o.is_empty());
        let arrived = match (parts.next().map(str::parse), parts.next().map(str::parse)) {
            (Some(Ok(priority)), Some(Ok(run_at))) => Some((priority, run_at)),
            _ => None,
        };
        Wakeup { queue, origin, arrived }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(priority: i32, run_at: Micros) -> Key {
        Key { priority, run_at, id: JobId::now_v7() }
    }

    #[test]
    fn a_full_claim_over_the_queue_leaves_a_head_and_a_short_one_clears_it() {
        let heads = Heads::default();
        let t = heads.start("q");
        assert_eq!(t.after, None, "nothing known yet");
        let k = key(0, 100);
        heads.claimed("q", t, true, Some(k));
        let t = heads.start("q");
        assert_eq!(t.after, Some(k));
        // A claim from the head moves it on and keeps when the queue was last looked at whole.
        let k2 = key(0, 200);
        heads.claimed("q", t, false, Some(k2));
        assert_eq!(heads.start("q").after, Some(k2));
        heads.claimed("q", heads.start("q"), true, None);
        assert_eq!(heads.start("q").after, None);
        // Queues are apart.
        heads.claimed("a", heads.start("a"), true, Some(k));
        assert_eq!(heads.start("b").after, None);
    }

    #[test]
    fn a_claim_from_the_head_never_makes_one() {
        let heads = Heads::default();
        let t = heads.start("q");
        heads.forget("q");
        let t2 = heads.start("q");
        // A claim from no head (its ticket) that is not over the whole queue cannot make one.
        heads.claimed("q", t2, false, Some(key(0, 1)));
        assert_eq!(heads.start("q").after, None);
        // A claim begun before a forget is not kept after it.
        heads.claimed("q", t, true, Some(key(0, 1)));
        assert_eq!(heads.start("q").after, None);
    }

    #[test]
    fn arrivals_before_the_head_forget_it_and_later_ones_do_not() {
        let heads = Heads::default();
        let k = key(5, 1_000);
        let place = |heads: &Heads| heads.claimed("q", heads.start("q"), true, Some(k));
        place(&heads);
        heads.arrived("q", 5, 1_001);
        heads.arrived("q", 4, 0);
        heads.arrived("other", 9, 0);
        assert_eq!(heads.start("q").after, Some(k), "after the head, or another queue");
        heads.arrived("q", 5, 1_000);
        assert_eq!(heads.start("q").after, None, "the same due time may sort before");
        place(&heads);
        heads.arrived("q", 6, 5_000);
        assert_eq!(heads.start("q").after, None, "a higher priority comes first");
        place(&heads);
        heads.forget_all();
        assert_eq!(heads.start("q").after, None);
        // With no head, a claim over the whole queue under way when jobs arrive may not
        // have seen them: it leaves no head, wherever they stand.
        let under_way = heads.start("q");
        heads.arrived("q", -5, 1_000_000);
        heads.claimed("q", under_way, true, Some(k));
        assert_eq!(heads.start("q").after, None);
    }

    #[test]
    fn a_head_holds_only_so_long_after_the_queue_was_looked_at_whole() {
        let heads = Heads::default();
        let k = key(0, 1);
        heads.claimed("q", heads.start("q"), true, Some(k));
        let mut map = heads.lock();
        let head = map.get_mut("q").and_then(|q| q.head.as_mut()).expect("a head");
        head.checked = Instant::now() - FRESH_FOR + Duration::from_millis(50);
        drop(map);
        assert_eq!(heads.start("q").after, Some(k), "still fresh");
        let mut map = heads.lock();
        map.get_mut("q").and_then(|q| q.head.as_mut()).expect("a head").checked = Instant::now() - FRESH_FOR;
        drop(map);
        assert_eq!(heads.start("q").after, None, "stale at FRESH_FOR");
    }

    #[test]
    fn wakeups_parse() {
        assert_eq!(Wakeup::parse("q"), Wakeup { queue: "q", origin: None, arrived: None });
        assert_eq!(Wakeup::parse("q\nabc"), Wakeup { queue: "q", origin: Some("abc"), arrived: None });
        assert_eq!(Wakeup::parse("q\n\n3\n17"), Wakeup { queue: "q", origin: None, arrived: Some((3, 17)) });
        assert_eq!(
            Wakeup::parse("q\nabc\n-2\n17"),
            Wakeup { queue: "q", origin: Some("abc"), arrived: Some((-2, 17)) }
        );
        assert_eq!(Wakeup::parse("q\n\nx\n17").arrived, None, "keys that do not parse are no keys");
    }
}
