//! Errors: what `GET /v1/errors` answers, the workspace's failures grouped.

use chrono::{DateTime, Utc};
use ferry_core::time::to_datetime;
use ferry_core::{ErrorType, Severity};
use ferry_store::FailureGroup;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Failed attempts alike but for the numbers, ids and quoted values in their messages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorGroupView {
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    pub queue: String,
    pub kind: String,
    /// The jobs' breaker key (their own, or their kind's: an http URL's origin), if any.
    pub target: Option<String>,
    /// The message with numbers as `<n>`, ids as `<id>` and quoted strings as `"…"`.
    pub message: String,
    /// Failed attempts in the group.
    pub count: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The highest severity among them; absent when none was recorded with one.
    pub severity: Option<Severity>,
    /// The job of the group's newest failure: `GET /v1/jobs/{id}` has its whole message.
    pub sample_job_id: Uuid,
}

impl From<FailureGroup> for ErrorGroupView {
    fn from(g: FailureGroup) -> Self {
        ErrorGroupView {
            error_type: g.error_type,
            queue: g.queue,
            kind: g.kind,
            target: g.target,
            message: g.message,
            count: g.count,
            first_seen: to_datetime(g.first_seen),
            last_seen: to_datetime(g.last_seen),
            severity: g.severity,
            sample_job_id: g.sample_job_id,
        }
    }
}

/// The workspace's failed attempts since `since`, grouped, most frequent first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorReport {
    /// The window's start.
    pub since: DateTime<Utc>,
    /// True when the window held more failures than are read (the newest 50,000): the
    /// counts are of those, and older failures of the window are left out.
    pub truncated: bool,
    /// Groups in all; `groups` holds the first `limit`.
    pub total_groups: usize,
    pub groups: Vec<ErrorGroupView>,
}
