//! `GET /v1/errors`: the workspace's failed attempts of a time window, grouped by type,
//! queue, kind, target and normalised message (`ferry_store::failures`), so that a
//! thousand failures with one cause read as one line.
//!
//! The read is bounded twice: the window starts at most `limits.max_horizon_ms` ago (an
//! earlier `since` is moved up to it, and the answer's `since` says so), and
//! at most [`MAX_FAILURES_READ`] failures (the newest) are read, the answer saying
//! `truncated` when the window held more.

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::views::{ErrorGroupView, ErrorReport};
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use ferry_core::time::{self, Micros};
use ferry_store::FailureFilter;
use std::collections::BTreeMap;

/// The most failed attempts one answer reads (the newest of the window).
pub const MAX_FAILURES_READ: usize = 50_000;

/// The window's start when `since` is not given: an hour ago.
const DEFAULT_WINDOW_MS: u64 = 3_600_000;

/// The workspace's failures since `since`, grouped, most frequent first (viewer).
///
/// Failures alike but for the numbers, UUIDs, hex ids and quoted strings in their
/// messages are one group, with its count, first and last time, highest severity and the
/// job of its newest failure.
#[utoipa::path(
    get, path = "/v1/errors", tag = "jobs", operation_id = "listErrors",
    params(
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339; default an hour ago; an earlier time than `limits.max_horizon_ms` ago reads from then (the answer's `since`)"),
        ("queue" = Option<String>, Query, description = "Only failures of this queue's jobs"),
        ("kind" = Option<String>, Query, description = "Only failures of this kind's jobs"),
        ("target" = Option<String>, Query, description = "Only failures of jobs with this breaker key (an http URL's origin, or a job's own key)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most groups answered, 1 to 1000 (default 50)"),
    ),
    responses((status = 200, body = ErrorReport), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<ErrorReport>, ApiError> {
    let now = time::now_micros();
    let horizon = st.cfg.limits.max_horizon_ms;
    let mut filter =
        FailureFilter { since: now - time::ms(DEFAULT_WINDOW_MS), cap: MAX_FAILURES_READ + 1, ..Default::default() };
    let mut limit = 50;
    for (key, value) in q {
        match key.as_str() {
            "since" => filter.since = since(&value, now, horizon)?,
            "queue" => filter.queue = Some(value),
            "kind" => filter.kind = Some(value),
            "target" => filter.target = Some(value),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_field("limit", "must be an integer from 1 to 1000"))?;
            }
            other => return Err(ApiError::bad_field(other, "unknown query parameter")),
        }
    }
    let window_start = filter.since;
    let mut rows = st.store.failures(&caller.workspace, filter).await?;
    let truncated = rows.len() > MAX_FAILURES_READ;
    rows.truncate(MAX_FAILURES_READ);
    let groups = ferry_store::failures::group(rows);
    Ok(Json(ErrorReport {
        since: time::to_datetime(window_start),
        truncated,
        total_groups: groups.len(),
        groups: groups.into_iter().take(limit).map(ErrorGroupView::from).collect(),
    }))
}

/// `since` as microseconds: RFC 3339, no earlier than `horizon_ms` before `now`.
fn since(value: &str, now: Micros, horizon_ms: u64) -> Result<Micros, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|_| ApiError::bad_field("since", format!("`{value}` is not an RFC 3339 time")))?;
    // Older than the horizon reads from the horizon (the answer's `since` says so).
    Ok(time::from_datetime(at.to_utc()).max(now.saturating_sub(time::ms(horizon_ms))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_rfc3339_and_moved_up_to_the_horizon() {
        let now = time::from_datetime(chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").unwrap().to_utc());
        assert_eq!(since("2026-01-01T23:00:00+00:00", now, 86_400_000).unwrap(), now - 3_600_000_000);
        assert_eq!(since("2026-01-01T00:00:00Z", now, 86_400_000).unwrap(), now - 86_400_000_000);
        assert_eq!(since("2025-12-31T23:59:59Z", now, 86_400_000).unwrap(), now - 86_400_000_000, "the horizon");
        for bad in ["yesterday", "2026-01-01", ""] {
            let e = since(bad, now, 86_400_000).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("since"), "{bad}");
        }
    }
}
