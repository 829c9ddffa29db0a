//! How bad a failure is: the one rule that gives every failed attempt a [`Severity`].
//!
//! A failure's severity says how urgently a person should look at it, so that a dashboard
//! or an alert can tell a blip that the next retry will absorb from a job that is lost.
//! It is decided once, where the worker decides what a failed attempt becomes (a retry or
//! a dead job), and recorded with the error on the attempt and on the job.
//!
//! The rule, in order (the first that applies wins, then the floors):
//!
//! 1. `cancelled`: **low**. Someone meant it.
//! 2. The job goes dead (no attempt left, the budget ran out, or the error is not
//!    retryable): **high**, raised to the queue's `severity` floor when it has one
//!    (`[queues.NAME] severity = "critical"`: a dead job there is **critical**).
//! 3. The failure will be retried, from the 3rd attempt on: **medium**. A dependency that
//!    failed three times in a row is worth a look even if a retry may still pass.
//! 4. The failure will be retried (attempts 1 and 2): **low**.
//! 5. Floor: `worker_lost` and `internal` are never below **medium**: a crashed worker or
//!    a bug in Ferry or an executor is ours to fix, whatever the job does next.
//!
//! The queue's floor applies to dead jobs only: a queue whose jobs matter raises the
//! alarm when one is lost, not for every retry that may still pass. (A floor of `low` or
//! `medium` is allowed and changes nothing, as a dead job is already `high`.)

use crate::ErrorType;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// How urgently a failure needs a person, lowest first (so `max` is the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Will be retried; nothing to do yet.
    Low,
    /// Retried again and again, or a lost worker or an internal error.
    Medium,
    /// The job is dead: its work is not done.
    High,
    /// A dead job on a queue configured critical.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown severity `{s}`; expected low, medium, high or critical"))
    }
}

/// The attempt number from which a failure that will be retried is `medium`.
pub const MEDIUM_FROM_ATTEMPT: u32 = 3;

/// The severity of a failed attempt (the module's rule): its error's type, its attempt
/// number (from 1), whether the job goes dead with it, and the queue's floor for dead
/// jobs (`None`: no floor).
pub fn severity(error_type: ErrorType, attempt: u32, dead: bool, dead_floor: Option<Severity>) -> Severity {
    if error_type == ErrorType::Cancelled {
        return Severity::Low;
    }
    let by_outcome = if dead {
        Severity::High.max(dead_floor.unwrap_or(Severity::High))
    } else if attempt >= MEDIUM_FROM_ATTEMPT {
        Severity::Medium
    } else {
        Severity::Low
    };
    match error_type {
        ErrorType::WorkerLost | ErrorType::Internal => by_outcome.max(Severity::Medium),
        _ => by_outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorType::*;
    use Severity::*;

    /// One case per branch of the rule: (type, attempt, dead, floor) → severity.
    #[test]
    fn every_branch_of_the_rule() {
        let cases = [
            // Retried, early: low.
            (Network, 1, false, None, Low),
            (Timeout, 2, false, Some(Critical), Low),
            // Retried from the 3rd attempt on: medium.
            (Network, 3, false, None, Medium),
            (HttpStatus, 7, false, Some(Critical), Medium),
            // Dead: high, whatever the attempt.
            (Network, 1, true, None, High),
            (Validation, 5, true, None, High),
            // Dead on a critical queue: critical; a lower floor changes nothing.
            (Network, 3, true, Some(Critical), Critical),
            (Network, 3, true, Some(Low), High),
            (Network, 3, true, Some(Medium), High),
            (Network, 3, true, Some(High), High),
            // worker_lost and internal: never below medium.
            (WorkerLost, 1, false, None, Medium),
            (Internal, 2, false, None, Medium),
            (WorkerLost, 3, true, None, High),
            (Internal, 1, true, Some(Critical), Critical),
            // cancelled: low, even when dead on a critical queue.
            (Cancelled, 1, true, Some(Critical), Low),
            (Cancelled, 9, false, None, Low),
        ];
        for (t, attempt, dead, floor, want) in cases {
            assert_eq!(severity(t, attempt, dead, floor), want, "{t} attempt {attempt} dead {dead} floor {floor:?}");
        }
    }

    #[test]
    fn ordered_lowest_first_and_names_round_trip() {
        assert!(Low < Medium && Medium < High && High < Critical);
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert!("urgent".parse::<Severity>().is_err());
    }
}
