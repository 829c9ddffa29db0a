//! An attempt's passage through its circuit breaker (see `ferry_core::breaker`): asked
//! before the executor runs, told what the attempt said of its target after.
//!
//! The breaker is the store's, one per key for every process (`Store::breaker`). A
//! closed breaker answers from a plain read; only an open breaker past its cool-down,
//! a probe and the outcomes that change counts take its lock. A quiet breaker (closed,
//! no failure in its window) is taken for closed for [`QUIET_FOR`] without reading it
//! again, unless this process saw a failure through it meanwhile: so a healthy target
//! costs a read per key every quarter second, not one per attempt, and a trip made
//! elsewhere (another process's failures, an operator's open on another node) reaches this
//! process within that time. An operator's change through this process's API reaches it
//! at once ([`super::Engine::forget_breaker`]).
//!
//! Successes are what every healthy call produces, so they are not written one by one:
//! a process counts them and reports them with its next report of that key (a failure, a
//! probe's end), or once they are a second old, and at once while the breaker counts
//! failures (as the last report answered), so that a success breaks a run of failures
//! when it happens. The cost is that, for up to a second, the failures of other processes
//! may be counted in a row across a success of this one.
//!
//! A store error here never stops work: the attempt goes as if the breaker were closed,
//! and the lost outcome is logged.

use super::Inner;
use ferry_core::breaker::{self, Admit, BreakerSettings, Held, Outcome};
use ferry_core::{ExecError, JobError};
use ferry_store::{BreakerOp, BreakerReport, ClaimedJob};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a process keeps successes before it reports them anyway.
const SUCCESSES_HELD: Duration = Duration::from_secs(1);

/// How long a quiet breaker is taken for closed without a read.
const QUIET_FOR: Duration = Duration::from_millis(250);

/// What the breaker lets an attempt do.
pub(super) enum Gate {
    /// No breaker, or closed: run.
    Go,
    /// Run as the half-open breaker's probe.
    Probe,
    /// Do not run: wait, or die with `circuit_open`.
    Held(Held),
}

/// What this process keeps of each breaker: successes not yet reported, whether the last
/// report found it counting failures, and until when it is taken for closed without a read.
#[derive(Default)]
pub(super) struct Book(Mutex<HashMap<String, Pending>>);

#[derive(Default)]
struct Pending {
    successes: u32,
    since: Option<Instant>,
    /// The last report found the breaker counting failures, or not closed (tripped,
    /// disabled): successes are reported at once, and every attempt reads it.
    counting: bool,
    /// Until when the breaker is taken for closed without a read.
    quiet_until: Option<Instant>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the successes to report with a report of `key`.
    fn take(&self, key: &str) -> u32 {
        self.lock().get_mut(key).map(|p| std::mem::take(&mut p.successes)).unwrap_or(0)
    }

    /// Counts a success; `Some(n)` when the `n` successes held must be reported now.
    fn success(&self, key: &str) -> Option<u32> {
        let mut map = self.lock();
        let p = map.entry(key.to_string()).or_default();
        let since = *p.since.get_or_insert_with(Instant::now);
        p.successes += 1;
        (p.counting || since.elapsed() >= SUCCESSES_HELD).then(|| {
            p.since = None;
            std::mem::take(&mut p.successes)
        })
    }

    /// What the last report said: whether the breaker counts failures now.
    fn counting(&self, key: &str, counting: bool) {
        let mut map = self.lock();
        let p = map.entry(key.to_string()).or_default();
        p.counting = counting;
        if counting {
            p.quiet_until = None;
        }
    }

    /// Whether the breaker is taken for closed without a read.
    fn is_quiet(&self, key: &str) -> bool {
        self.lock().get(key).and_then(|p| p.quiet_until).is_some_and(|t| Instant::now() < t)
    }

    /// A read found the breaker quiet (or not).
    fn quiet(&self, key: &str, quiet: bool) {
        let mut map = self.lock();
        let p = map.entry(key.to_string()).or_default();
        p.quiet_until = (quiet && !p.counting).then(|| Instant::now() + QUIET_FOR);
    }

    /// Reads the breaker again at its next attempt (an operator changed it).
    pub(super) fn forget(&self, key: &str) {
        if let Some(p) = self.lock().get_mut(key) {
            p.quiet_until = None;
        }
    }
}

fn settings<'a>(inner: &'a Inner, key: &str, job: &ClaimedJob) -> &'a BreakerSettings {
    inner.cfg.breakers.settings(key, &job.queue)
}

/// Asks the breaker `key` whether `job`'s attempt may run now.
pub(super) async fn admit(inner: &Inner, job: &ClaimedJob, key: &str) -> Gate {
    let book = &inner.breaker_book;
    if book.is_quiet(key) {
        return Gate::Go;
    }
    let answer = match inner.store.breaker_admit(key, settings(inner, key, job)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(breaker = key, job = %job.id, error = %e, "breaker unreadable; the attempt goes");
            return Gate::Go;
        }
    };
    book.quiet(key, answer.quiet);
    let admit = answer.admit;
    match breaker::hold(key, admit, job.deadline_at, answer.now) {
        None if admit == Admit::Probe => Gate::Probe,
        None => Gate::Go,
        Some(held) => {
            // No key as a label: it may be a name a job chose (see the README's Metrics).
            metrics::counter!("ferry_breaker_held_total").increment(1);
            Gate::Held(held)
        }
    }
}

/// Tells the breaker `key` how `job`'s attempt ended (`error`: `None` for a success).
pub(super) async fn record(inner: &Inner, job: &ClaimedJob, key: &str, probe: bool, error: Option<&ExecError>) {
    let recorded: Option<JobError> = error.map(ExecError::to_job_error);
    let outcome = Outcome::of(recorded.as_ref());
    let disable = error.is_some_and(|e| e.disables_target);
    let book = &inner.breaker_book;
    let successes = match (outcome, probe, disable) {
        (Outcome::Neutral, false, false) => return,
        (Outcome::Success, false, false) => match book.success(key) {
            Some(n) => n - 1,
            None => return,
        },
        _ => book.take(key),
    };
    let report = BreakerReport { successes, outcome, probe, disable, job: Some(job.id) };
    let op = BreakerOp::Report { settings: settings(inner, key, job).clone(), report };
    match inner.store.breaker(key, op).await {
        Ok(out) => {
            book.counting(key, !out.record.breaker.is_quiet());
        }
        Err(e) => {
            tracing::warn!(breaker = key, job = %job.id, error = %e, "an outcome was not recorded on the breaker")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_breaker_is_taken_for_closed_until_a_failure_or_a_forget() {
        let book = Book::default();
        assert!(!book.is_quiet("k"), "never read");
        book.quiet("k", true);
        assert!(book.is_quiet("k"));
        book.forget("k");
        assert!(!book.is_quiet("k"), "an operator's change: read again");
        book.quiet("k", true);
        book.counting("k", true);
        assert!(!book.is_quiet("k"), "a failure seen here: read every time");
        book.quiet("k", true);
        assert!(!book.is_quiet("k"), "not while the last report counted failures");
        book.counting("k", false);
        book.quiet("k", false);
        assert!(!book.is_quiet("k"), "a read that found it failing");
    }

    #[test]
    fn successes_wait_for_the_next_report_unless_failures_are_being_counted() {
        let book = Book::default();
        assert_eq!(book.success("k"), None, "held");
        assert_eq!(book.success("k"), None);
        assert_eq!(book.take("k"), 2, "reported with the next report");
        book.counting("k", true);
        assert_eq!(book.success("k"), Some(1), "at once while failures are counted");
    }
}
