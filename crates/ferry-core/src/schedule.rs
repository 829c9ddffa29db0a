//! Schedules, pure: what a schedule is ([`ScheduleSpec`]) and its validation, when it
//! ticks ([`Timing`]), which ticks fire after the last one ([`due`], the catch-up rule),
//! and what a tick does while the previous start is still going ([`overlap`]).
//!
//! A schedule starts a job (a [`JobSpec`] as `POST /v1/jobs` takes it) or a workflow run
//! ([`RunTarget`]) on a cron expression in an IANA time zone, or every fixed interval. The
//! store keeps, per schedule, the next tick (`next_fire_at`) and the last one fired; a
//! scheduler (`ferry_worker::scheduler`) proposes a firing with the ticks [`due`] chose,
//! and the store's transaction decides (compare-and-set on `next_fire_at`), so any
//! number of nodes start exactly one job or run per tick. Each start carries the
//! idempotency key [`idempotency_key`]: the schedule's id and the tick's time.
//!
//! Times: a tick is an instant in microseconds since the epoch ([`Micros`]). A cron
//! expression is matched in the schedule's time zone by croner, whose rules for daylight
//! saving time apply (see `docs/schedules.md`): at a spring-forward gap a fixed-time
//! expression (`30 2 * * *`) fires at the first instant after the gap, a wildcard or
//! stepped one skips the times inside it; in a fall-back overlap a fixed-time expression
//! fires once (the first pass), a wildcard one on both passes. An interval schedule ticks
//! at `anchor + k × every_ms` (its anchor is its creation time), whatever the zone.
//!
//! **Invariant:** no I/O and no clock: every function takes `now`.

use crate::job::{JobSpec, SpecError};
use crate::time::{Micros, ms};
use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The shortest interval of an `every_ms` schedule.
pub const MIN_EVERY_MS: u64 = 1_000;
/// The longest interval of an `every_ms` schedule (a year).
pub const MAX_EVERY_MS: u64 = 366 * 24 * 3600 * 1000;
/// The most missed ticks `catch_up: {"policy": "all"}` starts after a downtime.
pub const MAX_CATCH_UP: u32 = 100;
/// The `max` of `catch_up: {"policy": "all"}` when none is given.
pub const DEFAULT_CATCH_UP: u32 = 10;
/// Under `catch_up: "none"`, a tick found this late or later is missed, not fired: a
/// scheduler that woke a little late (a busy node, a slow store) still fires its tick,
/// while one that was down for longer skips what it slept through.
pub const ON_TIME_MS: u64 = 60_000;
/// How many ticks back [`due`] counts the ones missed (beyond: reported as this many).
pub const MAX_MISSED_COUNTED: u64 = 10_000;
/// The longest name of a schedule.
pub const MAX_NAME_BYTES: usize = 100;

/// A schedule as a client creates it (`POST /v1/schedules`). Exactly one of `cron` and
/// `every_ms`, and exactly one of `job` and `run`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique in the workspace: 1 to 100 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// A cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6
    /// (seconds first), or a nickname (`@hourly`, `@daily`…), matched in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval in milliseconds (at least 1000), counted from the schedule's
    /// creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// The IANA time zone of `cron` (`Europe/Paris`); default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The job each tick submits, as `POST /v1/jobs` takes it (without
    /// `idempotency_key` or `run_at`: the schedule sets the key, the tick the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// The workflow run each tick starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunTarget>,
    /// A tick whose previous start has not ended: `skip` (the default), `queue` or
    /// `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// Ticks missed while no scheduler ran (default `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
    /// Created paused (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// The workflow run a schedule starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTarget {
    pub workflow: String,
    /// Default: the latest version when the tick fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The run's input: an object, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// What a tick does while the schedule's previous job or run has not ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Starts nothing; the tick is counted as skipped.
    #[default]
    Skip,
    /// Waits, and starts when the previous ends; at most one tick waits (a later one is
    /// skipped).
    Queue,
    /// Starts regardless.
    Allow,
}

/// The catch-up rule: what fires for ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatchUp {
    pub policy: CatchUpPolicy,
    /// With `all`: the most missed ticks started, the latest ones (1 to 100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// See [`CatchUp`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpPolicy {
    /// Missed ticks are dropped: only a tick less than a minute late fires.
    None,
    /// The latest missed tick fires, however late; earlier ones are dropped.
    #[default]
    Latest,
    /// Each missed tick fires, oldest first, up to `max` (the latest ones).
    All,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron { cron: Box<Cron>, tz: Tz },
    Every { every: Micros, anchor: Micros },
}

/// A spec checked, with its defaults resolved.
#[derive(Debug, Clone)]
pub struct Valid {
    pub timing: Timing,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
}

impl ScheduleSpec {
    /// Checks the spec's own rules (not the job's against the server: the API does that)
    /// and resolves its defaults; `anchor` is the schedule's creation time.
    pub fn validate(&self, anchor: Micros) -> Result<Valid, SpecError> {
        check_name(&self.name)?;
        let timing = match (&self.cron, self.every_ms) {
            (Some(_), Some(_)) => {
                return Err(SpecError::invalid("every_ms", "give either `cron` or `every_ms`, not both"));
            }
            (None, None) => return Err(SpecError::invalid("cron", "give `cron` or `every_ms`")),
            (Some(expr), None) => Timing::Cron { cron: Box::new(parse_cron(expr)?), tz: self.zone()? },
            (None, Some(every)) => {
                if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&every) {
                    return Err(SpecError::invalid(
                        "every_ms",
                        format!("must be between {MIN_EVERY_MS} and {MAX_EVERY_MS}"),
                    ));
                }
                // Checked even though an interval ignores it: a typo should not pass.
                self.zone()?;
                Timing::Every { every: ms(every), anchor }
            }
        };
        match (&self.job, &self.run) {
            (Some(_), Some(_)) => return Err(SpecError::invalid("run", "give either `job` or `run`, not both")),
            (None, None) => return Err(SpecError::invalid("job", "give `job` or `run`")),
            (Some(job), None) => {
                if job.idempotency_key.is_some() {
                    return Err(SpecError::invalid(
                        "job.idempotency_key",
                        "is set by the schedule (`schedule:<id>:<tick>`)",
                    ));
                }
                if job.run_at.is_some() {
                    return Err(SpecError::invalid("job.run_at", "is the tick's time; use `delay_ms` to start later"));
                }
            }
            (None, Some(run)) => {
                if run.workflow.is_empty() {
                    return Err(SpecError::invalid("run.workflow", "must not be empty"));
                }
                if run.input.as_ref().is_some_and(|i| !i.is_object() && !i.is_null()) {
                    return Err(SpecError::invalid("run.input", "must be a JSON object (or absent)"));
                }
            }
        }
        let catch_up = self.catch_up.unwrap_or_default();
        match (catch_up.policy, catch_up.max) {
            (CatchUpPolicy::All, Some(max)) if max == 0 || max > MAX_CATCH_UP => {
                return Err(SpecError::invalid("catch_up.max", format!("must be between 1 and {MAX_CATCH_UP}")));
            }
            (CatchUpPolicy::None | CatchUpPolicy::Latest, Some(_)) => {
                return Err(SpecError::invalid("catch_up.max", "applies only to the policy `all`"));
            }
            _ => {}
        }
        Ok(Valid { timing, overlap: self.overlap.unwrap_or_default(), catch_up })
    }

    fn zone(&self) -> Result<Tz, SpecError> {
        let name = self.timezone.as_deref().unwrap_or("UTC");
        name.parse::<Tz>()
            .map_err(|_| SpecError::invalid("timezone", format!("`{name}` is not an IANA time zone (`Europe/Paris`)")))
    }
}

fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(SpecError::invalid("name", format!("must be 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ -"))),
    }
}

/// Parses a cron expression of 5 or 6 fields (seconds optional), or a nickname.
fn parse_cron(expr: &str) -> Result<Cron, SpecError> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(SpecError::invalid(
            "cron",
            format!("has {fields} fields; a cron expression has 5 (minute first) or 6 (seconds first)"),
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| SpecError::invalid("cron", format!("`{expr}` is not a cron expression: {e}")))
}

impl Timing {
    /// The first tick strictly after `t`; `None` when there is none (a cron whose last
    /// match has passed).
    pub fn next_after(&self, t: Micros) -> Option<Micros> {
        match self {
            Timing::Every { every, anchor } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let k = (t - anchor) / every + 1;
                anchor.checked_add(k.checked_mul(*every)?)
            }
            Timing::Cron { cron, tz } => {
                let at = tz.timestamp_micros(t).single()?;
                let next = cron.find_next_occurrence(&at, false).ok()?;
                Some(next.with_timezone(&Utc).timestamp_micros())
            }
        }
    }

    /// The latest tick at or before `t`.
    fn at_or_before(&self, t: Micros) -> Option<Micros> {
        match self {
            Timing::Every { every, anchor } => (t >= *anchor).then(|| anchor + (t - anchor) / every * every),
            Timing::Cron { cron, tz } => {
                let at = tz.timestamp_micros(t).single()?;
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                Some(prev.with_timezone(&Utc).timestamp_micros())
            }
        }
    }

    /// The first tick at or after `t`: a new schedule's first `next_fire_at`, and a
    /// resumed one's.
    pub fn first_from(&self, t: Micros) -> Option<Micros> {
        self.next_after(t.saturating_sub(1))
    }

    /// Up to `n` ticks after `t`, in order (what listings show).
    pub fn upcoming(&self, t: Micros, n: usize) -> Vec<Micros> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n
            && let Some(next) = self.next_after(at)
        {
            out.push(next);
            at = next;
        }
        out
    }
}

/// What [`due`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The ticks to fire, oldest first.
    pub fire: Vec<Micros>,
    /// Due ticks the catch-up rule dropped (counted up to [`MAX_MISSED_COUNTED`]).
    pub missed: u64,
    /// The next tick after `now`; `None`: the schedule never ticks again.
    pub next: Option<Micros>,
}

/// The catch-up rule: of the ticks from `next_fire_at` to `now` (both included), which
/// fire, how many are dropped, and the next tick. Nothing is due before `next_fire_at`.
///
/// - `none`: only the latest due tick, and only if it is less than [`ON_TIME_MS`] late;
/// - `latest`: the latest due tick, however late;
/// - `all` (`max` N): the latest N due ticks, oldest first.
///
/// In the usual case, a scheduler that woke at its tick, exactly one tick is due and
/// every policy fires it.
pub fn due(timing: &Timing, catch_up: CatchUp, next_fire_at: Micros, now: Micros) -> Due {
    let next = timing.next_after(now.max(next_fire_at.saturating_sub(1)));
    if next_fire_at > now {
        return Due { fire: Vec::new(), missed: 0, next: Some(next_fire_at) };
    }
    let want = match catch_up.policy {
        CatchUpPolicy::None | CatchUpPolicy::Latest => 1,
        CatchUpPolicy::All => catch_up.max.unwrap_or(DEFAULT_CATCH_UP).clamp(1, MAX_CATCH_UP) as u64,
    };
    // Walk back from `now` to `next_fire_at`: the latest ticks are the ones that may
    // fire, the rest are only counted.
    let mut fire = Vec::new();
    let mut total: u64 = 0;
    let mut at = now;
    while total < MAX_MISSED_COUNTED + want
        && let Some(tick) = timing.at_or_before(at)
        && tick >= next_fire_at
    {
        if total < want {
            fire.push(tick);
        }
        total += 1;
        at = tick - 1;
    }
    if catch_up.policy == CatchUpPolicy::None && fire.first().is_some_and(|latest| now - latest >= ms(ON_TIME_MS)) {
        fire.clear();
    }
    fire.reverse();
    let missed = (total - fire.len() as u64).min(MAX_MISSED_COUNTED);
    Due { fire, missed, next }
}

/// What a tick does, given its schedule's overlap policy, whether the previous start is
/// still going, and whether a tick already waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickStart {
    Start,
    /// Waits for the previous start to end (`queue`).
    Wait,
    Skip,
}

/// See [`TickStart`].
pub fn overlap(policy: Overlap, previous_live: bool, waiting: bool) -> TickStart {
    match (policy, previous_live) {
        (Overlap::Allow, _) | (_, false) => TickStart::Start,
        (Overlap::Skip, true) => TickStart::Skip,
        (Overlap::Queue, true) if waiting => TickStart::Skip,
        (Overlap::Queue, true) => TickStart::Wait,
    }
}

/// The idempotency key of the start of the schedule `id`'s tick `tick`: two nodes racing
/// for one tick store one job or run.
pub fn idempotency_key(id: uuid::Uuid, tick: Micros) -> String {
    format!("schedule:{id}:{tick}")
}

#[cfg(test)]
mod tests;
