//! An attempt's passage through its circuit breaker (see `ferry_core::breaker`): asked
//! before the executor runs, told what the attempt said of its target after.
//!
//! The breaker is the store's, one per key for every process ([`Store::breaker`]). A
//! closed breaker answers from a plain read; only an open breaker past its cool-down,
//! a probe and the outcomes that change counts take its lock.
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

/// What the breaker lets an attempt do.
pub(super) enum Gate {
    /// No breaker, or closed: run.
    Go,
    /// Run as the half-open breaker's probe.
    Probe,
    /// Do not run: wait, or die with `circuit_open`.
    Held(Held),
}

/// This process's successes not yet reported, per key.
#[derive(Default)]
pub(super) struct Unreported(Mutex<HashMap<String, Pending>>);

struct Pending {
    successes: u32,
    since: Instant,
    /// The last report found the breaker counting failures.
    counting: bool,
}

impl Unreported {
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
        let p = map.entry(key.to_string()).or_insert(Pending { successes: 0, since: Instant::now(), counting: false });
        if p.successes == 0 {
            p.since = Instant::now();
        }
        p.successes += 1;
        (p.counting || p.since.elapsed() >= SUCCESSES_HELD).then(|| std::mem::take(&mut p.successes))
    }

    fn counting(&self, key: &str, counting: bool) {
        let mut map = self.lock();
        match map.get_mut(key) {
            Some(p) => p.counting = counting,
            None if counting => {
                map.insert(key.to_string(), Pending { successes: 0, since: Instant::now(), counting });
            }
            None => {}
        }
    }
}

fn settings<'a>(inner: &'a Inner, key: &str, job: &ClaimedJob) -> &'a BreakerSettings {
    inner.cfg.breakers.settings(key, &job.queue)
}

/// Asks the breaker `key` whether `job`'s attempt may run now.
pub(super) async fn admit(inner: &Inner, job: &ClaimedJob, key: &str) -> Gate {
    let answer = inner.store.breaker_admit(key, settings(inner, key, job)).await;
    let (admit, now) = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(breaker = key, job = %job.id, error = %e, "breaker unreadable; the attempt goes");
            return Gate::Go;
        }
    };
    match breaker::hold(key, admit, job.deadline_at, now) {
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
    let unreported = &inner.breakers_unreported;
    let successes = match (outcome, probe, disable) {
        (Outcome::Neutral, false, false) => return,
        (Outcome::Success, false, false) => match unreported.success(key) {
            Some(n) => n - 1,
            None => return,
        },
        _ => unreported.take(key),
    };
    let report = BreakerReport { successes, outcome, probe, disable, job: Some(job.id) };
    let op = BreakerOp::Report { settings: settings(inner, key, job).clone(), report };
    match inner.store.breaker(key, op).await {
        Ok(out) => {
            let b = &out.record.breaker;
            unreported.counting(key, b.consecutive > 0 || b.window_failures > 0);
        }
        Err(e) => {
            tracing::warn!(breaker = key, job = %job.id, error = %e, "an outcome was not recorded on the breaker")
        }
    }
}
