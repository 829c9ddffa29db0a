//! The job model: the spec a client submits, its validated form, its states, and the rule
//! that decides what follows a failed attempt.
//!
//! ```text
//!                  run_at reached
//!   scheduled ─────────────────────┐
//!       │                          ▼
//!       │ cancel               queued ◀──────────── replay ─────────┐
//!       ▼                          │  ▲                             │
//!   cancelled ◀──── cancel ────────┤  │ released at shutdown     dead / cancelled
//!       ▲                          ▼  │                             ▲
//!       └──────── cancel ───── running ──── non-retryable, out of ───┘
//!                                  │  │     attempts or budget
//!                     succeeded ◀──┘  └──▶ retrying ── backoff over ──▶ queued
//! ```
//!
//! Not drawn: a running job whose circuit breaker holds it back goes back to `scheduled`
//! without spending an attempt (see [`crate::breaker`]).
//!
//! The legal moves are listed once, in [`JobState::can_become`]; the stores only ever make
//! those moves, and a property test holds [`decide_after_failure`] to them.

use crate::backoff::Backoff;
use crate::error::{ErrorType, JobError};
use crate::time::{self, Micros};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// A job's id: a UUIDv7, so ids sort by creation time and B-tree inserts stay local.
pub type JobId = Uuid;

/// The states of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Admitted with `on_limit: "queue"` beyond a concurrency limit: waits for a slot,
    /// in the order jobs were held.
    Held,
    /// Waits for its `run_at`.
    Scheduled,
    /// Ready; waits for a worker.
    Queued,
    /// An attempt holds a lease on it.
    Running,
    /// The last attempt failed; waits for its backoff to pass.
    Retrying,
    /// Finished with a result.
    Succeeded,
    /// Failed for good: the dead-letter queue.
    Dead,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 8] = [
        JobState::Held,
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The stable snake_case name, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Held => "held",
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether no attempt will ever start again without a user's replay.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }

    /// The legal transitions, in one place.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Held, Scheduled | Queued | Cancelled)
                | (Scheduled, Queued | Cancelled)
                | (Queued, Running | Cancelled)
                | (Running, Succeeded | Retrying | Dead | Cancelled | Queued | Scheduled)
                | (Retrying, Queued | Cancelled)
                | (Dead | Cancelled, Queued)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown state `{s}`"))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The executor returned a result.
    Succeeded,
    /// The executor failed, timed out, or its worker was lost.
    Failed,
    /// The job was cancelled while this attempt ran.
    Cancelled,
    /// The worker shut down and handed the job back; the attempt does not count.
    Released,
}

impl AttemptOutcome {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Released => "released",
        }
    }
}

impl FromStr for AttemptOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [AttemptOutcome::Succeeded, AttemptOutcome::Failed, AttemptOutcome::Cancelled, AttemptOutcome::Released]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown outcome `{s}`"))
    }
}

/// A job as a client submits it. Only `kind` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The executor that runs the job (`noop`, `sleep`, `fail`, `http`, …).
    pub kind: String,
    /// The executor's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The queue (default: the kind's own, `webhook` for webhooks; else `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts before the job is dead (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Timeout of one attempt in milliseconds (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Soft timeout of one attempt in milliseconds, at most `timeout_ms`: an executor that
    /// runs a process asks it to stop (SIGTERM) at this point and kills it at `timeout_ms`.
    /// Default: 3/4 of `timeout_ms`, for the kinds that use it (`exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    /// Retry budget in milliseconds, counted from when the job first became due: no
    /// attempt starts and no attempt runs past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout_ms: Option<u64>,
    /// When the job becomes due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// Delay before the job becomes due, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Makes submission exactly-once within a workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Beyond a concurrency limit: `refuse` (429, the default) or `queue` (admitted as
    /// `held`; it is queued when a slot frees, in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<OnLimit>,
    /// The circuit breaker the job goes through (1 to 255 bytes, no spaces or control
    /// characters). Default: the kind's, for kinds that call a remote (`http`: the URL's
    /// origin, `scheme://host:port`); none for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// Jobs of a workspace with the same ordering key run one at a time, in the order they
    /// were submitted (1 to 255 bytes, no spaces or control characters): a job starts
    /// once every job submitted before it under its key has ended (succeeded, dead or
    /// cancelled), whatever its priority. Default: the kind's (`webhook` with
    /// `"ordered": true`: its endpoint); none for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
}

/// What a submission beyond a concurrency limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// 429 (the default).
    Refuse,
    /// Admitted, and held until a slot frees, in order.
    Queue,
}

/// Limits applied when a spec is validated. Each is stated in the README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest serialized `input` of one job, in bytes.
    pub max_input_bytes: usize,
    /// Largest `max_attempts`.
    pub max_attempts: u32,
    /// Largest `timeout_ms`.
    pub max_timeout_ms: u64,
    /// Largest `total_timeout_ms` and `delay_ms`, and furthest `run_at`.
    pub max_horizon_ms: u64,
    /// Default attempt timeout.
    pub default_timeout_ms: u64,
    /// Default attempts.
    pub default_max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 1024 * 1024,
            max_attempts: 100,
            max_timeout_ms: 24 * 3_600_000,
            max_horizon_ms: 365 * 24 * 3_600_000,
            default_timeout_ms: 30_000,
            default_max_attempts: 3,
        }
    }
}

/// Why a spec was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending field, as a path (`input`, `backoff.max_ms`, `labels.team`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The field is over a size limit (answered 413 rather than 400).
    pub too_large: bool,
}

impl SpecError {
    /// A field that is not acceptable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into(), too_large: false }
    }

    /// Prefixes the field path, for specs inside a batch (`jobs[3].kind`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// A validated job, ready to be stored. Defaults are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub workspace: String,
    pub user: String,
    pub kind: String,
    pub input: serde_json::Value,
    pub queue: String,
    pub priority: i32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub timeout_ms: u64,
    /// As given; `None` lets the executor use its default (3/4 of `timeout_ms`).
    pub soft_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    /// When the job becomes due; `None` means at once.
    pub run_at: Option<Micros>,
    pub labels: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the spec without its key: a key reused with another spec is a conflict.
    pub request_hash: Option<String>,
    /// Set by the submitter when the kind may answer from a recent identical success
    /// (`exec`'s result cache); `None` from [`JobSpec::validate`].
    pub cache_key: Option<String>,
    /// The job's own breaker key ([`JobSpec::breaker`]); `None`: the kind's, if any.
    pub breaker: Option<String>,
    /// The job's ordering key ([`JobSpec::ordering_key`]), the kind's set by the submitter.
    pub ordering_key: Option<String>,
}

/// What [`valid_key`] accepts, in an error message's words.
pub const KEY_RULE: &str = "must be 1 to 255 bytes without spaces or control characters";

/// Whether `key` may be a breaker or ordering key: 1 to 255 bytes, no whitespace or
/// control characters (a URL's origin fits).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// What [`valid_name`] accepts, in an error message's words.
pub const NAME_RULE: &str = "must be 1 to 64 characters of letters, digits, `_`, `-` or `.`";

/// Whether `value` is a valid name of a kind, queue or label key: 1 to 64 letters,
/// digits, `_`, `-` or `.`.
pub fn valid_name(value: &str) -> bool {
    !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    if valid_name(value) { Ok(()) } else { Err(SpecError::invalid(field, NAME_RULE)) }
}

impl JobSpec {
    /// Validates the spec and resolves its defaults.
    pub fn validate(self, workspace: &str, user: &str, now: Micros, limits: &Limits) -> Result<NewJob, SpecError> {
        check_name("kind", &self.kind)?;
        let queue = self.queue.clone().unwrap_or_else(|| "default".to_string());
        check_name("queue", &queue)?;
        let input = self.input.clone().unwrap_or(serde_json::Value::Null);
        let input_len = serde_json::to_vec(&input).map(|v| v.len()).unwrap_or(usize::MAX);
        if input_len > limits.max_input_bytes {
            return Err(SpecError {
                field: "input".into(),
                message: format!("is {input_len} bytes; the limit is {} bytes", limits.max_input_bytes),
                too_large: true,
            });
        }
        let max_attempts = self.max_attempts.unwrap_or(limits.default_max_attempts);
        if max_attempts == 0 || max_attempts > limits.max_attempts {
            return Err(SpecError::invalid("max_attempts", format!("must be between 1 and {}", limits.max_attempts)));
        }
        let backoff = self.backoff.clone().unwrap_or_default();
        backoff.validate().map_err(|(f, m)| SpecError::invalid(f, m))?;
        let timeout_ms = self.timeout_ms.unwrap_or(limits.default_timeout_ms);
        if timeout_ms == 0 || timeout_ms > limits.max_timeout_ms {
            return Err(SpecError::invalid("timeout_ms", format!("must be between 1 and {}", limits.max_timeout_ms)));
        }
        if let Some(soft) = self.soft_timeout_ms
            && (soft == 0 || soft > timeout_ms)
        {
            return Err(SpecError::invalid(
                "soft_timeout_ms",
                format!("must be between 1 and the attempt's timeout_ms ({timeout_ms})"),
            ));
        }
        if let Some(t) = self.total_timeout_ms
            && (t == 0 || t > limits.max_horizon_ms)
        {
            return Err(SpecError::invalid(
                "total_timeout_ms",
                format!("must be between 1 and {}", limits.max_horizon_ms),
            ));
        }
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(SpecError::invalid("delay_ms", "give either run_at or delay_ms, not both"));
            }
            (Some(at), None) => {
                let at = time::from_datetime(at);
                if at > now.saturating_add(time::ms(limits.max_horizon_ms)) {
                    return Err(SpecError::invalid("run_at", "is too far in the future"));
                }
                (at > now).then_some(at)
            }
            (None, Some(d)) if d > limits.max_horizon_ms => {
                return Err(SpecError::invalid("delay_ms", format!("must be at most {}", limits.max_horizon_ms)));
            }
            (None, Some(0)) | (None, None) => None,
            (None, Some(d)) => Some(now.saturating_add(time::ms(d))),
        };
        let labels = self.labels.clone().unwrap_or_default();
        if labels.len() > 32 {
            return Err(SpecError::invalid("labels", "at most 32 labels"));
        }
        for (k, v) in &labels {
            check_name(&format!("labels.{k}"), k)?;
            if v.len() > 256 {
                return Err(SpecError::invalid(format!("labels.{k}"), "values are at most 256 bytes"));
            }
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(SpecError::invalid("idempotency_key", "must be 1 to 255 bytes"));
        }
        for (field, key) in [("breaker", &self.breaker), ("ordering_key", &self.ordering_key)] {
            if let Some(key) = key
                && !valid_key(key)
            {
                return Err(SpecError::invalid(field, KEY_RULE));
            }
        }
        let request_hash = self.idempotency_key.as_ref().map(|_| {
            let mut unkeyed = self.clone();
            unkeyed.idempotency_key = None;
            let bytes = serde_json::to_vec(&unkeyed).unwrap_or_default();
            format!("{:x}", Sha256::digest(bytes))
        });
        Ok(NewJob {
            id: Uuid::now_v7(),
            workspace: workspace.to_string(),
            user: user.to_string(),
            kind: self.kind,
            input,
            queue,
            priority: self.priority.unwrap_or(0),
            max_attempts,
            backoff,
            timeout_ms,
            soft_timeout_ms: self.soft_timeout_ms,
            total_timeout_ms: self.total_timeout_ms,
            run_at,
            labels,
            idempotency_key: self.idempotency_key,
            request_hash,
            cache_key: None,
            breaker: self.breaker,
            ordering_key: self.ordering_key,
        })
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Try again at `run_at`.
    Retry { run_at: Micros, error: JobError },
    /// Give up: the job is dead.
    Dead { error: JobError },
}

/// What [`decide_after_failure`] needs to know about the job.
#[derive(Debug, Clone, Copy)]
pub struct RetryState<'a> {
    /// Attempts that count against `max_attempts`, including the one that just failed.
    pub attempts_counted: u32,
    pub max_attempts: u32,
    /// End of the retry budget, if the job has one.
    pub deadline_at: Option<Micros>,
    pub backoff: &'a Backoff,
}

/// Decides whether a failed attempt is retried: non-retryable errors and exhausted
/// attempts are dead at once; a retry that would start at or after the budget's end is
/// dead with `budget_exhausted`. A remote's `Retry-After` replaces the backoff delay.
pub fn decide_after_failure(
    job: RetryState<'_>,
    error: JobError,
    retry_after: Option<Duration>,
    now: Micros,
    sample: f64,
) -> Decision {
    if !error.retryable || job.attempts_counted >= job.max_attempts {
        return Decision::Dead { error };
    }
    let delay_ms = match retry_after {
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None => job.backoff.delay_ms(job.attempts_counted, sample),
    };
    let run_at = now.saturating_add(time::ms(delay_ms));
    if let Some(deadline) = job.deadline_at
        && run_at >= deadline
    {
        return Decision::Dead {
            error: JobError {
                error_type: ErrorType::BudgetExhausted,
                message: format!(
                    "retry budget exhausted after {} attempt(s); last error: {}: {}",
                    job.attempts_counted, error.error_type, error.message
                ),
                retryable: false,
                severity: None,
            },
        };
    }
    Decision::Retry { run_at, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> JobSpec {
        JobSpec { kind: kind.into(), ..JobSpec::default() }
    }

    #[test]
    fn defaults_resolve() {
        let job = spec("noop").validate("default", "local", 1_000, &Limits::default()).unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.timeout_ms, 30_000);
        assert_eq!(job.run_at, None);
        assert_eq!(job.request_hash, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let l = Limits::default();
        let cases: Vec<(JobSpec, &str)> = vec![
            (spec(""), "kind"),
            (JobSpec { queue: Some("a b".into()), ..spec("noop") }, "queue"),
            (JobSpec { max_attempts: Some(0), ..spec("noop") }, "max_attempts"),
            (JobSpec { max_attempts: Some(101), ..spec("noop") }, "max_attempts"),
            (JobSpec { timeout_ms: Some(0), ..spec("noop") }, "timeout_ms"),
            (JobSpec { total_timeout_ms: Some(0), ..spec("noop") }, "total_timeout_ms"),
            (JobSpec { soft_timeout_ms: Some(0), ..spec("noop") }, "soft_timeout_ms"),
            (JobSpec { timeout_ms: Some(1000), soft_timeout_ms: Some(1001), ..spec("noop") }, "soft_timeout_ms"),
            (JobSpec { delay_ms: Some(1), run_at: Some(Utc::now()), ..spec("noop") }, "delay_ms"),
            (JobSpec { idempotency_key: Some(String::new()), ..spec("noop") }, "idempotency_key"),
            (JobSpec { breaker: Some(String::new()), ..spec("noop") }, "breaker"),
            (JobSpec { breaker: Some("a b".into()), ..spec("noop") }, "breaker"),
            (JobSpec { breaker: Some("x".repeat(256)), ..spec("noop") }, "breaker"),
            (JobSpec { ordering_key: Some(String::new()), ..spec("noop") }, "ordering_key"),
            (JobSpec { ordering_key: Some("a\tb".into()), ..spec("noop") }, "ordering_key"),
            (JobSpec { ordering_key: Some("x".repeat(256)), ..spec("noop") }, "ordering_key"),
        ];
        for (s, field) in cases {
            assert_eq!(s.validate("w", "u", 0, &l).unwrap_err().field, field);
        }
        // The longest keys pass.
        let longest = JobSpec { breaker: Some("x".repeat(255)), ordering_key: Some("y".repeat(255)), ..spec("noop") };
        let job = longest.validate("w", "u", 0, &l).unwrap();
        assert_eq!(job.ordering_key.map(|k| k.len()), Some(255));
    }

    #[test]
    fn input_limit_is_exact() {
        let l = Limits { max_input_bytes: 10, ..Limits::default() };
        // `"12345678"` serializes to exactly 10 bytes.
        let ok = JobSpec { input: Some(serde_json::json!("12345678")), ..spec("noop") };
        assert!(ok.validate("w", "u", 0, &l).is_ok());
        let big = JobSpec { input: Some(serde_json::json!("123456789")), ..spec("noop") };
        let err = big.validate("w", "u", 0, &l).unwrap_err();
        assert!(err.too_large);
        assert_eq!(err.field, "input");
    }

    #[test]
    fn request_hash_ignores_key_but_not_body() {
        let l = Limits::default();
        let a = JobSpec { idempotency_key: Some("k1".into()), ..spec("noop") };
        let b = JobSpec { idempotency_key: Some("k2".into()), ..spec("noop") };
        let c = JobSpec { idempotency_key: Some("k1".into()), priority: Some(3), ..spec("noop") };
        let h = |s: JobSpec| s.validate("w", "u", 0, &l).unwrap().request_hash.unwrap();
        assert_eq!(h(a.clone()), h(b));
        assert_ne!(h(a), h(c));
    }

    fn retry_state(counted: u32, deadline: Option<Micros>, backoff: &Backoff) -> RetryState<'_> {
        RetryState { attempts_counted: counted, max_attempts: 3, deadline_at: deadline, backoff }
    }

    #[test]
    fn failure_decisions() {
        let b = Backoff { initial_ms: 10, max_ms: 10, multiplier: 1.0, jitter: crate::Jitter::None };
        let net = JobError::new(ErrorType::Network, "down");
        assert_eq!(
            decide_after_failure(retry_state(1, None, &b), net.clone(), None, 0, 0.5),
            Decision::Retry { run_at: 10_000, error: net.clone() }
        );
        assert!(matches!(
            decide_after_failure(retry_state(3, None, &b), net.clone(), None, 0, 0.5),
            Decision::Dead { .. }
        ));
        let bad = JobError::new(ErrorType::Validation, "no");
        assert!(matches!(decide_after_failure(retry_state(1, None, &b), bad, None, 0, 0.5), Decision::Dead { .. }));
        match decide_after_failure(retry_state(1, Some(10_000), &b), net.clone(), None, 0, 0.5) {
            Decision::Dead { error } => assert_eq!(error.error_type, ErrorType::BudgetExhausted),
            other => panic!("expected budget_exhausted, got {other:?}"),
        }
        let d = decide_after_failure(retry_state(1, None, &b), net, Some(Duration::from_secs(2)), 0, 0.5);
        assert!(matches!(d, Decision::Retry { run_at: 2_000_000, .. }));
    }

    #[test]
    fn transitions_are_closed() {
        for s in JobState::ALL {
            assert!(!JobState::Succeeded.can_become(s), "succeeded is final");
            assert!(
                matches!(s, JobState::Held | JobState::Running) || !s.can_become(JobState::Scheduled),
                "only a held job or one its breaker holds back becomes scheduled"
            );
            assert!(!s.can_become(JobState::Held), "a job is held only at submission");
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!(JobState::Running.can_become(JobState::Retrying));
        assert!(!JobState::Queued.can_become(JobState::Succeeded));
    }
}
