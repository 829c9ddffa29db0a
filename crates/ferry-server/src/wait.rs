//! Waiting inside a request for a job or a run to end: `?wait=30s` on `POST /v1/jobs`,
//! `POST /v1/runs`, `GET /v1/jobs/{id}` and `GET /v1/runs/{id}`.
//!
//! The wait costs no polling of the store: it watches the subject's event log
//! (`ferry_store::EventSignal`), which every end writes to, on whichever node it is
//! recorded (PostgreSQL tells the other nodes), and reads the job or run again only when
//! the watch fires, with a slow safety net for a missed notification. A submission that
//! waits answers 200 with the ended job or run, or 202 with what it accepted when the
//! wait ends first; a read that waits answers 200 either way.

use crate::ApiError;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;

/// The longest wait a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting request reads again without a signal.
const SAFETY_NET: Duration = Duration::from_secs(5);

/// The `wait` query parameter.
#[derive(Debug, Default, Deserialize)]
pub struct WaitQuery {
    /// `500ms`, `30s` or `1m`: at most 60 s.
    pub wait: Option<String>,
}

impl WaitQuery {
    /// The wait asked for, if any.
    pub fn duration(&self) -> Result<Option<Duration>, ApiError> {
        self.wait.as_deref().map(parse).transpose()
    }
}

/// Reads `500ms`, `30s` or `1m` (a whole number and its unit), at most [`MAX_WAIT`].
pub fn parse(raw: &str) -> Result<Duration, ApiError> {
    let bad =
        || {
            ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", format!(
        "`{raw}` is not a wait: give a whole number of `ms`, `s` or `m` (`500ms`, `30s`, `1m`), at most 60 s"
    ))
    .field("wait")
        };
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = raw.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let wait = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if wait > MAX_WAIT {
        return Err(bad());
    }
    Ok(wait)
}

/// A request's wait on a subject: woken by its events, over at the deadline.
pub struct Waiter {
    watch: ferry_store::EventWatch,
    deadline: Instant,
}

impl Waiter {
    /// Watches `subject` for `wait`. Watching starts before the caller's first read, so
    /// an end committed after it fires the watch.
    pub fn new(
        signal: &std::sync::Arc<ferry_store::EventSignal>,
        subject: ferry_store::Subject,
        wait: Duration,
    ) -> Self {
        Waiter { watch: signal.watch(subject), deadline: Instant::now() + wait }
    }

    /// Waits for the subject's next events (or the safety net); `false` once the wait is
    /// over, after which the caller answers with its last read.
    pub async fn next(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        tokio::select! {
            _ = self.watch.changed() => {}
            _ = tokio::time::sleep(SAFETY_NET) => {}
            _ = tokio::time::sleep_until(self.deadline) => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_a_whole_number_and_its_unit_up_to_a_minute() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1m").unwrap(), MAX_WAIT);
        assert_eq!(parse("60000ms").unwrap(), MAX_WAIT, "the edge");
        for bad in ["", "30", "s", "1.5s", "-1s", "2m", "60001ms", "61s", "30 s", "99999999999999999999s"] {
            assert!(parse(bad).is_err(), "`{bad}`");
        }
    }
}
