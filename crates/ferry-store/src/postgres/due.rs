//! When a queue's next scheduled or retrying job is due, as this process knows it: a
//! claim runs the promotion statement (`promote_due.sql`, a round trip and row locks)
//! only when something may be due, rather than before every claim.
//!
//! What is known comes from the last promotion (it answers how long until the next due
//! job) and is forgotten whenever this process may have made a job due sooner (a
//! submission with a `run_at`, a retry, a held job released as scheduled) or an idle
//! dispatcher asks for the next due time. Another process's new scheduled jobs are not
//! seen here: what is known goes stale after [`STALE_AFTER`], so such a job is promoted
//! at most that late by a busy worker of this process (an idle one looks at the next due
//! time before it waits, and that forgets the queue's entry). Times are kept on this
//! process's monotonic clock, computed from the database's, so clock skew between the
//! two does not matter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long what is known of a queue's due times holds.
pub(super) const STALE_AFTER: Duration = Duration::from_millis(250);

/// The promotion statement promotes at most this many jobs; more may be due after it.
const PROMOTE_BATCH: i64 = 1000;

#[derive(Default)]
pub(super) struct DueTimes(Mutex<State>);

#[derive(Default)]
struct State {
    known: HashMap<String, Known>,
    /// Moved on by every forget: a promotion that began before one is not kept after it
    /// (it may not have seen the job that made the forget).
    generation: u64,
}

struct Known {
    /// Nothing of the queue is due before this.
    quiet_until: Instant,
    learned: Instant,
}

impl DueTimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a claim of `queue` must run the promotion first: `Some` with what to hand
    /// [`DueTimes::promoted`] afterwards.
    pub(super) fn must_promote(&self, queue: &str) -> Option<u64> {
        let now = Instant::now();
        let state = self.lock();
        let quiet =
            state.known.get(queue).is_some_and(|k| now < k.quiet_until && now.duration_since(k.learned) < STALE_AFTER);
        (!quiet).then_some(state.generation)
    }

    /// What a promotion begun at `generation` answered: how many it promoted, and the
    /// microseconds until the next due job (`None`: none waits).
    pub(super) fn promoted(&self, queue: &str, generation: u64, promoted: i64, next_in_us: Option<i64>) {
        let now = Instant::now();
        let quiet = match (promoted >= PROMOTE_BATCH, next_in_us) {
            // A full batch: more may be due at once.
            (true, _) => None,
            (false, Some(us)) => Some(now + Duration::from_micros(us.max(0) as u64)),
            (false, None) => Some(now + STALE_AFTER),
        };
        let mut state = self.lock();
        match quiet {
            Some(quiet_until) if state.generation == generation => {
                state.known.insert(queue.to_string(), Known { quiet_until, learned: now });
            }
            _ => {
                state.known.remove(queue);
            }
        }
    }

    /// This process may have made a job of `queue` due sooner than known.
    pub(super) fn forget(&self, queue: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.known.remove(queue);
    }

    /// As [`DueTimes::forget`], for every queue.
    pub(super) fn forget_all(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_promotes_until_it_knows_better_and_again_once_something_may_be_due() {
        let due = DueTimes::default();
        let g = due.must_promote("q").expect("nothing known yet");
        due.promoted("q", g, 0, Some(60_000_000));
        assert!(due.must_promote("q").is_none(), "the next job is a minute away");
        due.forget("q");
        let g = due.must_promote("q").expect("a retry here may be due sooner");
        due.promoted("q", g, 0, Some(0));
        let g = due.must_promote("q").expect("the next job is due now");
        due.promoted("q", g, PROMOTE_BATCH, Some(60_000_000));
        let g = due.must_promote("q").expect("a full batch: more may be due");
        due.promoted("q", g, 0, None);
        assert!(due.must_promote("q").is_none(), "nothing waits");
        due.forget_all();
        assert!(due.must_promote("q").is_some());
    }

    #[test]
    fn a_promotion_begun_before_a_forget_is_not_kept_after_it() {
        let due = DueTimes::default();
        let began = due.must_promote("q").expect("nothing known yet");
        // A retry commits and forgets while the promotion runs without seeing it.
        due.forget("q");
        due.promoted("q", began, 0, None);
        assert!(due.must_promote("q").is_some(), "the stale answer was kept");
    }
}
