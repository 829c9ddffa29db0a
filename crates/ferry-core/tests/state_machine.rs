//! Pins the retry rule's promises over random failure histories: a job never gets more
//! attempts than `max_attempts`, never retries a non-retryable error, never schedules a
//! retry at or past its retry budget, only makes legal state moves, and once dead stays
//! dead.

use ferry_core::time::Micros;
use ferry_core::{Backoff, Decision, ErrorType, Jitter, JobError, JobState, RetryState, decide_after_failure};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Failure {
    error_type: ErrorType,
    retryable: Option<bool>,
    retry_after_ms: Option<u64>,
    ran_ms: u64,
    sample: f64,
}

fn failure() -> impl Strategy<Value = Failure> {
    (
        proptest::sample::select(ErrorType::ALL.to_vec()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u64..5_000),
        0u64..10_000,
        0.0f64..1.0,
    )
        .prop_map(|(error_type, retryable, retry_after_ms, ran_ms, sample)| Failure {
            error_type,
            retryable,
            retry_after_ms,
            ran_ms,
            sample,
        })
}

fn backoff() -> impl Strategy<Value = Backoff> {
    (0u64..2_000, 0u64..60_000, 1.0f64..4.0, any::<bool>()).prop_map(|(initial, extra, multiplier, full)| Backoff {
        initial_ms: initial,
        max_ms: initial + extra,
        multiplier,
        jitter: if full { Jitter::Full } else { Jitter::None },
    })
}

proptest! {
    #[test]
    fn failure_histories_respect_the_policy(
        max_attempts in 1u32..8,
        budget_ms in proptest::option::of(1u64..100_000),
        backoff in backoff(),
        failures in proptest::collection::vec(failure(), 1..20),
    ) {
        let start: Micros = 1_000_000;
        let deadline = budget_ms.map(|b| start + b as i64 * 1000);
        let mut now = start;
        let mut state = JobState::Queued;
        let mut attempts = 0u32;
        for f in failures {
            if state == JobState::Dead {
                break;
            }
            // The job runs an attempt, which fails.
            prop_assert!(state.can_become(JobState::Running) || state == JobState::Retrying);
            attempts += 1;
            prop_assert!(attempts <= max_attempts, "attempt {attempts} of at most {max_attempts}");
            state = JobState::Running;
            now += f.ran_ms as i64 * 1000;
            let error = JobError {
                error_type: f.error_type,
                message: "x".into(),
                retryable: f.retryable.unwrap_or(f.error_type.retryable_by_default()),
                severity: None,
            };
            let retry_state = RetryState { attempts_counted: attempts, max_attempts, deadline_at: deadline, backoff: &backoff };
            let retry_after = f.retry_after_ms.map(Duration::from_millis);
            match decide_after_failure(retry_state, error.clone(), retry_after, now, f.sample) {
                Decision::Retry { run_at, error: kept } => {
                    prop_assert!(state.can_become(JobState::Retrying));
                    prop_assert!(error.retryable, "a non-retryable error was retried");
                    prop_assert!(attempts < max_attempts);
                    prop_assert_eq!(kept, error);
                    prop_assert!(run_at >= now);
                    if let Some(d) = deadline {
                        prop_assert!(run_at < d, "retry at {run_at} is past the budget's end {d}");
                    }
                    if retry_after.is_none() {
                        prop_assert!(run_at - now <= backoff.max_ms as i64 * 1000);
                    }
                    state = JobState::Retrying;
                    now = run_at;
                    // Promotion when due.
                    prop_assert!(state.can_become(JobState::Queued));
                    state = JobState::Queued;
                }
                Decision::Dead { error: final_error } => {
                    prop_assert!(state.can_become(JobState::Dead));
                    prop_assert!(!final_error.retryable || final_error == error);
                    let budget_out = final_error.error_type == ErrorType::BudgetExhausted;
                    prop_assert!(!error.retryable || attempts >= max_attempts || budget_out);
                    state = JobState::Dead;
                }
            }
        }
        prop_assert!(!JobState::Dead.can_become(JobState::Running), "dead never runs without a replay");
    }
}
