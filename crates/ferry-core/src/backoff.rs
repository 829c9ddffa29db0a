//! Retry backoff: exponential growth, capped, with full jitter by default.
//!
//! Full jitter (a uniformly random delay between zero and the exponential bound) spreads
//! a burst of failures over time instead of retrying them all in lock-step, which is what
//! a struggling dependency needs. `jitter: "none"` gives the exact bound, for callers that
//! want predictable spacing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// A uniformly random delay in `[0, bound]`.
    #[default]
    Full,
    /// Exactly the bound.
    None,
}

/// The backoff policy of a job. Every field has a default, so `{}` is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay bound before the first retry, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay bound, in milliseconds.
    pub max_ms: u64,
    /// Growth of the bound per attempt (at least 1).
    pub multiplier: f64,
    /// Randomisation of the delay.
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 1_000, max_ms: 60_000, multiplier: 2.0, jitter: Jitter::Full }
    }
}

impl Backoff {
    /// The delay before the retry that follows the `failed_attempts`-th failure (1-based),
    /// given a uniform random sample in `[0, 1)`.
    pub fn delay_ms(&self, failed_attempts: u32, sample: f64) -> u64 {
        let exp = failed_attempts.saturating_sub(1).min(64) as i32;
        let bound = (self.initial_ms as f64) * self.multiplier.powi(exp);
        let bound = bound.min(self.max_ms as f64).max(0.0);
        match self.jitter {
            Jitter::None => bound as u64,
            Jitter::Full => (bound * sample.clamp(0.0, 1.0)) as u64,
        }
    }

    /// Checks the policy's fields, naming the bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 || self.multiplier > 100.0 {
            return Err(("backoff.multiplier", "must be between 1 and 100".into()));
        }
        if self.max_ms < self.initial_ms {
            return Err(("backoff.max_ms", "must be at least backoff.initial_ms".into()));
        }
        if self.max_ms > 7 * 24 * 3_600_000 {
            return Err(("backoff.max_ms", "must be at most 7 days".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff { initial_ms: 100, max_ms: 1_000, multiplier: 2.0, jitter: Jitter::None };
        let d: Vec<u64> = (1..=6).map(|n| b.delay_ms(n, 0.5)).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn full_jitter_stays_within_bound() {
        let b = Backoff { initial_ms: 100, max_ms: 1_000, multiplier: 3.0, jitter: Jitter::Full };
        assert_eq!(b.delay_ms(2, 0.0), 0);
        assert_eq!(b.delay_ms(2, 0.5), 150);
        assert!(b.delay_ms(2, 0.999_999) <= 300);
    }

    #[test]
    fn rejects_bad_policy() {
        let b = Backoff { multiplier: 0.5, ..Backoff::default() };
        assert_eq!(b.validate().unwrap_err().0, "backoff.multiplier");
        let b = Backoff { initial_ms: 10, max_ms: 5, ..Backoff::default() };
        assert_eq!(b.validate().unwrap_err().0, "backoff.max_ms");
    }
}
