//! Circuit breakers: whether a target's jobs may be attempted now, decided from the
//! target's recent outcomes.
//!
//! A breaker guards one target (an HTTP host, or any key a job names). It is
//! - **closed**: attempts go. It trips (→ open) after `failures` failures in a row that
//!   count against the target, or, once `min_calls` outcomes were seen in the current
//!   window of `window_ms`, when the share of failures among them reaches `ratio` (0 turns
//!   the ratio rule off). The window is fixed: it starts afresh once `window_ms` passed.
//! - **open**: nothing is attempted until the cool-down has passed (`cool_down_ms` for the
//!   first trip; each trip in a row without a close doubles it, up to `max_cool_down_ms`).
//! - **half-open**: up to `probes` attempts at once go as probes. A probe that succeeds
//!   closes the breaker (and the cool-down starts again from `cool_down_ms` next time);
//!   one that fails opens it again with the longer cool-down. A probe whose end is never
//!   recorded (its worker died) frees its place after [`PROBE_LOST_MS`] or one cool-down,
//!   whichever is longer.
//! - **disabled**: the target said it is gone for good (a webhook endpoint's `410 Gone`):
//!   its jobs die at once with `circuit_open` until an operator resets the breaker.
//!
//! What counts against a target ([`Outcome::of`]): a retryable failure that says the
//! target is unwell (a timeout, a connection error, a retryable HTTP status such as a 5xx,
//! a 429). A job's own fault (its input, a cancel, its budget), a worker lost or Ferry's
//! own error say nothing of the target and count neither way; a late outcome of an
//! attempt begun before the breaker opened is ignored while it is open.
//!
//! This is the rule only, with no clock and no I/O: a store keeps one [`Breaker`] per key
//! and applies [`Breaker::admit`] and [`Breaker::record`] in the transaction that reads
//! it, so every process sees one breaker and transitions never race.

use crate::error::{ErrorType, JobError};
use crate::time::{self, Micros};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How long a probe may go without its end recorded before it is taken for lost (its
/// worker died) and another may go; longer when the cool-down is.
pub const PROBE_LOST_MS: u64 = 30_000;

/// When a breaker trips and how it recovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures in a row that trip a closed breaker (1 to 10,000).
    #[schema(minimum = 1, maximum = 10_000)]
    pub failures: u32,
    /// The share of failures in the window that trips it (0: no ratio rule).
    #[schema(minimum = 0, maximum = 1)]
    pub ratio: f64,
    /// Outcomes the window must hold before the ratio applies (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub min_calls: u32,
    /// The window's length (at most a day).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub window_ms: u64,
    /// How long a breaker stays open after its first trip (at most a day).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub cool_down_ms: u64,
    /// The longest cool-down, however many trips in a row (at least `cool_down_ms`: a
    /// smaller one is refused with 400; at most a day).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub max_cool_down_ms: u64,
    /// Probe attempts at once while half-open (1 to 1,000).
    #[schema(minimum = 1, maximum = 1_000)]
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            ratio: 0.5,
            min_calls: 20,
            window_ms: 60_000,
            cool_down_ms: 30_000,
            max_cool_down_ms: 600_000,
            probes: 1,
        }
    }
}

impl BreakerSettings {
    /// Checks the settings; the error names the bad field.
    /// Checks the settings against the bounds their fields state; the error names the bad
    /// field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        const DAY_MS: u64 = 86_400_000;
        let bounds = [
            ("failures", u64::from(self.failures), 10_000),
            ("min_calls", u64::from(self.min_calls), 1_000_000),
            ("window_ms", self.window_ms, DAY_MS),
            ("cool_down_ms", self.cool_down_ms, DAY_MS),
            ("max_cool_down_ms", self.max_cool_down_ms, DAY_MS),
            ("probes", u64::from(self.probes), 1_000),
        ];
        for (field, v, max) in bounds {
            if !(1..=max).contains(&v) {
                return Err((field, format!("must be from 1 to {max}")));
            }
        }
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(("ratio", "must be from 0 to 1 (0: no ratio rule)".into()));
        }
        if self.max_cool_down_ms < self.cool_down_ms {
            return Err(("max_cool_down_ms", format!("must be at least cool_down_ms ({})", self.cool_down_ms)));
        }
        Ok(())
    }
}

/// The configured breaker settings: a target's own, else its job's queue's, else the
/// defaults (an operator's settings for one key, kept by the store, win over all three).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// `false` turns breakers off: no job is held back, no outcome recorded.
    pub enabled: bool,
    /// The settings of every breaker without settings of its own.
    pub defaults: BreakerSettings,
    /// Per queue: the breakers its jobs go through.
    pub queues: std::collections::BTreeMap<String, BreakerSettings>,
    /// Per target key (`https://api.example.com:443`, or a job's own `breaker`).
    pub targets: std::collections::BTreeMap<String, BreakerSettings>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            defaults: BreakerSettings::default(),
            queues: Default::default(),
            targets: Default::default(),
        }
    }
}

impl BreakerConfig {
    /// The settings of the breaker `key` for a job of `queue`.
    pub fn settings(&self, key: &str, queue: &str) -> &BreakerSettings {
        self.targets.get(key).or_else(|| self.queues.get(queue)).unwrap_or(&self.defaults)
    }

    /// Checks every settings block; the error names it (`breakers.queues.webhook.ratio`).
    pub fn validate(&self) -> Result<(), String> {
        let named = std::iter::once(("breakers.defaults".to_string(), &self.defaults))
            .chain(self.queues.iter().map(|(q, s)| (format!("breakers.queues.{q}"), s)))
            .chain(self.targets.iter().map(|(t, s)| (format!("breakers.targets.\"{t}\""), s)));
        for (name, s) in named {
            s.validate().map_err(|(field, why)| format!("{name}.{field} {why}"))?;
        }
        Ok(())
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
    Disabled,
}

impl BreakerState {
    /// Every state.
    pub const ALL: [BreakerState; 4] =
        [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen, BreakerState::Disabled];

    /// The stable snake_case name, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BreakerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BreakerState::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown breaker state `{s}`"))
    }
}

/// One target's breaker, as a store keeps it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Breaker {
    pub state: BreakerState,
    /// Failures in a row, while closed.
    pub consecutive: u32,
    /// The current window: when it began and what it saw.
    pub window_start: Micros,
    pub successes: u32,
    pub window_failures: u32,
    /// While open: when probes may begin.
    pub retry_at: Micros,
    /// The cool-down of the last trip (0: no trip since the last close).
    pub cool_down_ms: u64,
    /// Probes under way, while half-open.
    pub probing: u32,
    /// While half-open: when the probes under way are taken for lost (their ends were
    /// never recorded), so that new ones may go.
    #[serde(default)]
    pub probes_expire_at: Micros,
    /// Trips since the breaker was made.
    pub trips: u64,
    /// Probes admitted since the breaker was made.
    #[serde(default)]
    pub probes: u64,
}

/// Whether an attempt may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// Half-open: go as a probe (record its outcome with `probe: true`).
    Probe,
    /// Open, or every probe is under way: wait until then without spending an attempt.
    Wait { until: Micros },
    /// Disabled: the job dies with `circuit_open`.
    Refuse,
}

/// What an attempt's end says of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Says nothing of the target.
    Neutral,
}

impl Outcome {
    /// The outcome of an attempt that succeeded (`None`) or failed with `error`.
    pub fn of(error: Option<&JobError>) -> Outcome {
        let Some(e) = error else { return Outcome::Success };
        match e.error_type {
            ErrorType::Timeout | ErrorType::Network | ErrorType::HttpStatus | ErrorType::RateLimited if e.retryable => {
                Outcome::Failure
            }
            _ => Outcome::Neutral,
        }
    }
}

/// A change of state worth telling (an event, a metric, an escalation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Tripped from closed, or reopened by a failed probe; probes may begin at `retry_at`.
    Opened { retry_at: Micros, cool_down_ms: u64 },
    /// The first probe began.
    HalfOpened,
    /// A probe succeeded, or an operator closed it.
    Closed,
    /// The target said it is gone for good.
    Disabled,
}

impl Change {
    /// The state the breaker is in after this change.
    pub fn state(self) -> BreakerState {
        match self {
            Change::Opened { .. } => BreakerState::Open,
            Change::HalfOpened => BreakerState::HalfOpen,
            Change::Closed => BreakerState::Closed,
            Change::Disabled => BreakerState::Disabled,
        }
    }
}

/// What a job that may not be attempted now becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// Scheduled again `wait` microseconds from now; the attempt does not count.
    Wait { wait: Micros },
    /// Dead with this `circuit_open` error: the breaker is disabled, or the job's retry
    /// budget ends before the breaker lets it go.
    Dead(JobError),
}

/// The rule for a job its breaker holds back: it waits without spending an attempt, unless
/// the breaker is disabled or the job's retry budget (`deadline_at`) ends first.
pub fn hold(key: &str, admit: Admit, deadline_at: Option<Micros>, now: Micros) -> Option<Held> {
    let dead = |why: String| {
        Some(Held::Dead(JobError {
            error_type: ErrorType::CircuitOpen,
            message: why,
            retryable: false,
            severity: None,
        }))
    };
    match admit {
        Admit::Go | Admit::Probe => None,
        Admit::Refuse => dead(format!(
            "the circuit breaker `{key}` is disabled (the target said it is gone); reset it to send again"
        )),
        Admit::Wait { until } if deadline_at.is_some_and(|d| until >= d) => {
            dead(format!("the circuit breaker `{key}` is open until after the job's retry budget ends"))
        }
        Admit::Wait { until } => Some(Held::Wait { wait: until.saturating_sub(now).max(0) }),
    }
}

impl Breaker {
    /// Closed, with no failure counted in its window: a process may take it for closed a
    /// little while without reading it again.
    pub fn is_quiet(&self) -> bool {
        self.state == BreakerState::Closed && self.consecutive == 0 && self.window_failures == 0
    }

    /// The answer [`Breaker::admit`] would give at `now`, when giving it changes nothing
    /// (closed, disabled, open before its time, every probe under way): a store answers
    /// these from a plain read, and takes the breaker's lock only for the others.
    pub fn peek(&self, s: &BreakerSettings, now: Micros) -> Option<Admit> {
        match self.state {
            BreakerState::Closed => Some(Admit::Go),
            BreakerState::Disabled => Some(Admit::Refuse),
            BreakerState::Open if now < self.retry_at => Some(Admit::Wait { until: self.retry_at }),
            BreakerState::HalfOpen if self.probing >= s.probes.max(1) && now < self.probes_expire_at => {
                Some(Admit::Wait { until: self.behind_probes(now) })
            }
            _ => None,
        }
    }

    /// Whether an attempt may start at `now`, and the change that made (open → half-open).
    pub fn admit(&mut self, s: &BreakerSettings, now: Micros) -> (Admit, Option<Change>) {
        let mut change = None;
        if self.state == BreakerState::Disabled {
            return (Admit::Refuse, None);
        }
        if self.state == BreakerState::HalfOpen && self.probing > 0 && now >= self.probes_expire_at {
            // The probes under way were lost with their workers.
            self.probing = 0;
        }
        if self.state == BreakerState::Open {
            if now < self.retry_at {
                return (Admit::Wait { until: self.retry_at }, None);
            }
            self.state = BreakerState::HalfOpen;
            self.probing = 0;
            change = Some(Change::HalfOpened);
        }
        match self.state {
            BreakerState::Closed => (Admit::Go, change),
            _ if self.probing < s.probes.max(1) => {
                self.probing += 1;
                self.probes += 1;
                self.probes_expire_at = now + time::ms(self.cool_down_ms.max(PROBE_LOST_MS));
                (Admit::Probe, change)
            }
            // Every probe is under way.
            _ => (Admit::Wait { until: self.behind_probes(now) }, change),
        }
    }

    /// How long a job waits while every probe is under way: one cool-down (a probe that
    /// closes the breaker lets the waiting jobs go sooner, and one that fails reopens it
    /// for longer, so that the waiting jobs find the next probe's time), at most until the
    /// probes are taken for lost.
    fn behind_probes(&self, now: Micros) -> Micros {
        (now + time::ms(self.cool_down_ms.max(1))).min(self.probes_expire_at).max(now + 1)
    }

    /// Records an attempt's end; `probe` when it was admitted as one.
    pub fn record(&mut self, s: &BreakerSettings, now: Micros, outcome: Outcome, probe: bool) -> Option<Change> {
        if probe && self.state == BreakerState::HalfOpen {
            self.probing = self.probing.saturating_sub(1);
            return match outcome {
                Outcome::Success => {
                    self.reset(now);
                    Some(Change::Closed)
                }
                Outcome::Failure => Some(self.trip(s, now)),
                Outcome::Neutral => None,
            };
        }
        if self.state != BreakerState::Closed {
            // A late end of an attempt begun before the trip.
            return None;
        }
        if now.saturating_sub(self.window_start) >= time::ms(s.window_ms) {
            (self.window_start, self.successes, self.window_failures) = (now, 0, 0);
        }
        match outcome {
            Outcome::Success => {
                self.consecutive = 0;
                self.successes += 1;
                None
            }
            Outcome::Failure => {
                self.consecutive += 1;
                self.window_failures += 1;
                let seen = self.successes + self.window_failures;
                let by_ratio = s.ratio > 0.0
                    && seen >= s.min_calls.max(1)
                    && f64::from(self.window_failures) >= s.ratio * f64::from(seen);
                (self.consecutive >= s.failures.max(1) || by_ratio).then(|| self.trip(s, now))
            }
            Outcome::Neutral => None,
        }
    }

    /// Opens the breaker: the first trip since a close waits `cool_down_ms`, each further
    /// one twice the last, up to `max_cool_down_ms`.
    fn trip(&mut self, s: &BreakerSettings, now: Micros) -> Change {
        let cool_down_ms = match self.cool_down_ms {
            0 => s.cool_down_ms,
            last => last.saturating_mul(2),
        }
        .min(s.max_cool_down_ms.max(s.cool_down_ms));
        self.state = BreakerState::Open;
        self.cool_down_ms = cool_down_ms;
        self.retry_at = now + time::ms(cool_down_ms);
        self.probing = 0;
        self.consecutive = 0;
        self.trips += 1;
        Change::Opened { retry_at: self.retry_at, cool_down_ms }
    }

    /// Forced open by an operator, until `now` plus the next cool-down.
    pub fn force_open(&mut self, s: &BreakerSettings, now: Micros) -> Change {
        self.trip(s, now)
    }

    /// Forced closed (or reset) by an operator: as new, keeping the counts of trips and
    /// probes.
    pub fn reset(&mut self, now: Micros) {
        *self = Breaker { window_start: now, trips: self.trips, probes: self.probes, ..Breaker::default() };
    }

    /// Disabled: the target said it is gone for good; nothing goes until a reset.
    pub fn disable(&mut self) -> Option<Change> {
        (self.state != BreakerState::Disabled).then(|| {
            self.state = BreakerState::Disabled;
            self.probing = 0;
            Change::Disabled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn settings() -> BreakerSettings {
        BreakerSettings { ratio: 0.0, ..BreakerSettings::default() }
    }

    fn fail(b: &mut Breaker, s: &BreakerSettings, now: Micros) -> Option<Change> {
        assert_eq!(b.admit(s, now).0, Admit::Go);
        b.record(s, now, Outcome::Failure, false)
    }

    #[test]
    fn trips_after_n_failures_in_a_row_and_a_success_starts_the_count_again() {
        let s = settings();
        let mut b = Breaker::default();
        for i in 0..4 {
            assert_eq!(fail(&mut b, &s, i), None);
        }
        assert_eq!(b.record(&s, 4, Outcome::Success, false), None);
        for i in 5..9 {
            assert_eq!(fail(&mut b, &s, i), None, "four in a row since the success");
        }
        // Neutral outcomes neither count nor break the run.
        assert_eq!(b.record(&s, 9, Outcome::Neutral, false), None);
        let change = fail(&mut b, &s, 10).expect("the fifth in a row trips");
        assert_eq!(change, Change::Opened { retry_at: 10 + 30 * S as Micros, cool_down_ms: 30_000 });
        assert_eq!(b.state, BreakerState::Open);
        assert_eq!(b.admit(&s, 11).0, Admit::Wait { until: 10 + 30 * S as Micros });
    }

    #[test]
    fn a_half_open_probe_closes_or_reopens_with_a_longer_cool_down() {
        let s = settings();
        let mut b = Breaker::default();
        b.force_open(&s, 0);
        let t = 30 * S as Micros;
        assert_eq!(b.admit(&s, t - 1).0, Admit::Wait { until: t }, "not before the cool-down");
        assert_eq!(b.admit(&s, t), (Admit::Probe, Some(Change::HalfOpened)));
        assert!(matches!(b.admit(&s, t).0, Admit::Wait { .. }), "one probe at a time");
        // A late failure of an attempt from before the trip changes nothing.
        assert_eq!(b.record(&s, t, Outcome::Failure, false), None);
        let change = b.record(&s, t + 1, Outcome::Failure, true).expect("a failed probe reopens");
        assert_eq!(change, Change::Opened { retry_at: t + 1 + 60 * S as Micros, cool_down_ms: 60_000 });
        // Again, and the cool-down keeps doubling up to its ceiling.
        for want in [120_000, 240_000, 480_000, 600_000, 600_000] {
            let at = b.retry_at;
            assert_eq!(b.admit(&s, at).0, Admit::Probe);
            assert_eq!(
                b.record(&s, at, Outcome::Failure, true),
                Some(Change::Opened { retry_at: at + want as Micros * 1000, cool_down_ms: want })
            );
        }
        let at = b.retry_at;
        assert_eq!(b.admit(&s, at).0, Admit::Probe);
        assert_eq!(b.record(&s, at, Outcome::Neutral, true), None, "a neutral probe frees its slot");
        assert_eq!(b.admit(&s, at).0, Admit::Probe);
        assert_eq!(b.record(&s, at, Outcome::Success, true), Some(Change::Closed));
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!(b.admit(&s, at).0, Admit::Go);
        // The next trip starts from the first cool-down again.
        for i in 0..4 {
            fail(&mut b, &s, at + i);
        }
        assert_eq!(
            fail(&mut b, &s, at + 4),
            Some(Change::Opened { retry_at: at + 4 + 30 * S as Micros, cool_down_ms: 30_000 })
        );
        assert_eq!(b.trips, 8);
    }

    #[test]
    fn the_ratio_trips_once_the_window_holds_enough_outcomes_and_the_window_starts_afresh() {
        let s = BreakerSettings { failures: 100, ratio: 0.5, min_calls: 10, ..BreakerSettings::default() };
        let mut b = Breaker::default();
        let outcomes = [Outcome::Success; 6].into_iter().chain([Outcome::Failure; 3]);
        for (i, outcome) in outcomes.enumerate() {
            assert_eq!(b.record(&s, i as Micros, outcome, false), None, "fewer than min_calls seen ({i})");
        }
        assert_eq!(b.record(&s, 9, Outcome::Failure, false), None, "4 of 10: under the ratio");
        assert_eq!(b.record(&s, 10, Outcome::Failure, false), None, "5 of 11: under it");
        assert!(matches!(b.record(&s, 11, Outcome::Failure, false), Some(Change::Opened { .. })), "6 of 12: at it");
        // After the window, the counts start again.
        let mut b = Breaker::default();
        for i in 0..9 {
            b.record(&s, i, Outcome::Failure, false);
        }
        let later = 61 * S as Micros;
        assert_eq!(b.record(&s, later, Outcome::Failure, false), None, "a fresh window holds one outcome");
        assert_eq!((b.window_start, b.window_failures), (later, 1));
    }

    #[test]
    fn peek_answers_only_what_changes_nothing_and_agrees_with_admit() {
        let s = settings();
        let mut b = Breaker::default();
        assert_eq!(b.peek(&s, 0), Some(Admit::Go));
        b.force_open(&s, 0);
        let t = 30 * S as Micros;
        assert_eq!(b.peek(&s, t - 1), Some(Admit::Wait { until: t }));
        assert_eq!(b.peek(&s, t), None, "the first probe changes the state");
        assert_eq!(b.admit(&s, t).0, Admit::Probe);
        let busy = b.peek(&s, t + 1);
        assert_eq!(busy, Some(b.admit(&s, t + 1).0), "every probe under way: a plain wait");
        assert_eq!(busy, Some(Admit::Wait { until: t + 30 * S as Micros }), "one cool-down, until the probe is lost");
        // A probe never recorded (its worker died) frees its place after a cool-down.
        let lost = t + 30 * S as Micros;
        assert_eq!(b.peek(&s, lost), None);
        assert_eq!(b.admit(&s, lost).0, Admit::Probe);
        assert_eq!(b.probes, 2);
        assert_eq!(b.disable(), Some(Change::Disabled));
        assert_eq!(b.disable(), None, "once");
        assert_eq!(b.peek(&s, lost), Some(Admit::Refuse));
        assert_eq!(b.admit(&s, lost).0, Admit::Refuse);
        assert_eq!(b.record(&s, lost, Outcome::Success, true), None, "a disabled breaker stays so");
        b.reset(lost);
        assert_eq!((b.state, b.trips, b.probes), (BreakerState::Closed, 1, 2));
    }

    #[test]
    fn behind_a_probe_a_job_waits_one_cool_down_so_that_it_finds_the_next_probe() {
        let s = BreakerSettings { cool_down_ms: 1_000, ..settings() };
        let mut b = Breaker::default();
        b.force_open(&s, 0);
        let t = S as Micros;
        assert_eq!(b.admit(&s, t).0, Admit::Probe);
        assert_eq!(b.admit(&s, t).0, Admit::Wait { until: 2 * t }, "one cool-down, not the 30 s a lost probe takes");
        b.record(&s, t + 5, Outcome::Failure, true);
        assert_eq!(b.retry_at, t + 5 + 2 * S as Micros, "reopened for two: the waiting jobs come back before it");
    }

    #[test]
    fn a_held_job_waits_without_an_attempt_unless_disabled_or_out_of_budget() {
        let wait = Admit::Wait { until: 100 };
        assert_eq!(hold("k", Admit::Go, Some(1), 50), None);
        assert_eq!(hold("k", Admit::Probe, None, 50), None);
        assert_eq!(hold("k", wait, None, 40), Some(Held::Wait { wait: 60 }));
        assert_eq!(hold("k", wait, Some(101), 40), Some(Held::Wait { wait: 60 }), "the budget ends after");
        for (admit, deadline) in [(wait, Some(100)), (Admit::Refuse, None)] {
            match hold("k", admit, deadline, 40) {
                Some(Held::Dead(e)) => {
                    assert_eq!((e.error_type, e.retryable), (ErrorType::CircuitOpen, false));
                    assert!(e.message.contains("`k`"), "{}", e.message);
                }
                other => panic!("expected dead, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_target_s_settings_win_over_its_queue_s_over_the_defaults() {
        let with = |failures| BreakerSettings { failures, ..BreakerSettings::default() };
        let cfg = BreakerConfig {
            enabled: true,
            defaults: with(1),
            queues: [("q".to_string(), with(2))].into(),
            targets: [("t".to_string(), with(3))].into(),
        };
        assert_eq!(cfg.settings("t", "q").failures, 3);
        assert_eq!(cfg.settings("other", "q").failures, 2);
        assert_eq!(cfg.settings("other", "other").failures, 1);
        let bad = BreakerConfig { queues: [("q".to_string(), with(0))].into(), ..cfg };
        assert_eq!(bad.validate().unwrap_err(), "breakers.queues.q.failures must be from 1 to 10000");
        let parsed: BreakerConfig = serde_json::from_str("{}").unwrap();
        assert!(parsed.enabled && BreakerConfig::default().enabled, "on unless turned off");
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        assert_eq!(BreakerSettings::default().validate(), Ok(()));
        let bad = |s: BreakerSettings| s.validate().unwrap_err().0;
        let d = BreakerSettings::default;
        assert_eq!(bad(BreakerSettings { failures: 0, ..d() }), "failures");
        assert_eq!(bad(BreakerSettings { ratio: 1.5, ..d() }), "ratio");
        assert_eq!(bad(BreakerSettings { probes: 0, ..d() }), "probes");
        assert_eq!(bad(BreakerSettings { cool_down_ms: 0, ..d() }), "cool_down_ms");
        assert_eq!(bad(BreakerSettings { max_cool_down_ms: 10, ..d() }), "max_cool_down_ms");
        assert_eq!(bad(BreakerSettings { window_ms: 86_400_001, ..d() }), "window_ms");
        assert_eq!(bad(BreakerSettings { probes: 1_001, ..d() }), "probes");
        assert!(BreakerSettings { probes: 1_000, failures: 10_000, ..d() }.validate().is_ok(), "at the edges");
    }

    #[test]
    fn what_counts_against_a_target() {
        let e = |t: ErrorType, retryable: bool| JobError {
            error_type: t,
            message: String::new(),
            retryable,
            severity: None,
        };
        assert_eq!(Outcome::of(None), Outcome::Success);
        for t in [ErrorType::Timeout, ErrorType::Network, ErrorType::HttpStatus, ErrorType::RateLimited] {
            assert_eq!(Outcome::of(Some(&e(t, true))), Outcome::Failure, "{t}");
            assert_eq!(Outcome::of(Some(&e(t, false))), Outcome::Neutral, "{t} not retryable (a 4xx)");
        }
        for t in [
            ErrorType::Validation,
            ErrorType::Cancelled,
            ErrorType::WorkerLost,
            ErrorType::Internal,
            ErrorType::CircuitOpen,
        ] {
            assert_eq!(Outcome::of(Some(&e(t, true))), Outcome::Neutral, "{t}");
        }
    }
}
