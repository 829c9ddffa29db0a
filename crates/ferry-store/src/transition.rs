//! What each transition writes, decided once for every backend: the job's new columns and
//! the events that record the move. Backends only turn these into their own SQL.

use crate::{Finish, FinishResult, Wait};
use ferry_core::time::{self, Micros};
use ferry_core::{JobError, JobState};
use serde_json::{Value, json};

/// The columns a finished attempt sets on its job.
pub(crate) struct FinishColumns<'a> {
    pub state: JobState,
    pub output: Option<&'a Value>,
    pub error: Option<&'a JobError>,
    /// Whether the job is final now (`finished_at` is set).
    pub finished: bool,
    /// The new `run_at`: a retry's time, or now for a released job; `None` keeps it.
    pub run_at: Option<Micros>,
    /// Added to `attempt_base`: 1 when the attempt does not count.
    pub base_inc: i64,
    /// The breaker that held the job back; `None` keeps the job's.
    pub breaker: Option<&'a str>,
}

pub(crate) fn finish_columns(result: &FinishResult, now: Micros) -> FinishColumns<'_> {
    match result {
        FinishResult::Succeeded { output } => FinishColumns {
            state: JobState::Succeeded,
            output: Some(output),
            error: None,
            finished: true,
            run_at: None,
            base_inc: 0,
            breaker: None,
        },
        FinishResult::Retry { retry_in, error, output } => FinishColumns {
            state: JobState::Retrying,
            output: output.as_ref(),
            error: Some(error),
            finished: false,
            run_at: Some(now.saturating_add(*retry_in)),
            base_inc: 0,
            breaker: None,
        },
        FinishResult::Dead { error, output, .. } => FinishColumns {
            state: JobState::Dead,
            output: output.as_ref(),
            error: Some(error),
            finished: true,
            run_at: None,
            base_inc: 0,
            breaker: None,
        },
        FinishResult::Released => FinishColumns {
            state: JobState::Queued,
            output: None,
            error: None,
            finished: false,
            run_at: Some(now),
            base_inc: 1,
            breaker: None,
        },
        FinishResult::Deferred { retry_in, wait } => FinishColumns {
            state: JobState::Scheduled,
            output: None,
            error: None,
            finished: false,
            run_at: Some(now.saturating_add(*retry_in)),
            base_inc: 1,
            breaker: match wait {
                Wait::Breaker(key) => Some(key),
                Wait::Order { .. } => None,
            },
        },
    }
}

/// The events an applied finish writes, in order. Each carries the attempt number, which
/// is how attempts are read back from the log.
pub(crate) fn finish_events(fin: &Finish, now: Micros) -> Vec<(&'static str, Value)> {
    let attempt = fin.attempt;
    match &fin.result {
        FinishResult::Succeeded { .. } => vec![("succeeded", json!({"attempt": attempt}))],
        FinishResult::Retry { retry_in, error, .. } => vec![
            ("attempt_failed", json!({"attempt": attempt, "error": error})),
            (
                "retry_scheduled",
                json!({"run_at": time::to_datetime(now.saturating_add(*retry_in)), "delay_ms": retry_in / 1000}),
            ),
        ],
        FinishResult::Dead { error, attempt_error, .. } => vec![
            ("attempt_failed", json!({"attempt": attempt, "error": attempt_error})),
            ("dead", json!({"error": error})),
        ],
        FinishResult::Released => vec![("released", json!({"attempt": attempt}))],
        FinishResult::Deferred { retry_in, wait } => {
            let (kind, mut data) = match wait {
                Wait::Breaker(key) => ("breaker_wait", json!({"attempt": attempt, "breaker": key})),
                Wait::Order { after } => {
                    ("order_wait", json!({"attempt": attempt, "after": after.map(|a| a.to_string())}))
                }
            };
            data["run_at"] = json!(time::to_datetime(now.saturating_add(*retry_in)));
            data["delay_ms"] = json!(retry_in / 1000);
            vec![(kind, data)]
        }
    }
}

/// A new job's first event: `queued`, or `scheduled` with its time.
pub(crate) fn submit_event(state: JobState, queue: &str, run_at: Micros) -> (&'static str, Value) {
    match state {
        JobState::Scheduled => ("scheduled", json!({"queue": queue, "run_at": time::to_datetime(run_at)})),
        _ => ("queued", json!({"queue": queue})),
    }
}

/// The `held` event of a job that waits for a slot (`on_limit: "queue"`), with why.
pub(crate) fn held_event(queue: &str, reason: &str) -> (&'static str, Value) {
    ("held", json!({"queue": queue, "reason": reason}))
}

/// A replay's events: `replayed`, with the state the job left, then `queued` as for a
/// new job.
pub(crate) fn replay_events(was: JobState, queue: &str) -> [(&'static str, Value); 2] {
    [("replayed", json!({"was": was.as_str()})), submit_event(JobState::Queued, queue, 0)]
}

/// The `cancelled` event; a running job's carries the attempt it stopped.
pub(crate) fn cancel_event(was: JobState, attempt: u32, error: &JobError) -> (&'static str, Value) {
    if was == JobState::Running {
        ("cancelled", json!({"was": was.as_str(), "attempt": attempt, "error": error}))
    } else {
        ("cancelled", json!({"was": was.as_str()}))
    }
}

/// The error a cancelled job carries.
pub(crate) fn cancel_error() -> JobError {
    JobError::new(ferry_core::ErrorType::Cancelled, "cancelled by a user")
}
