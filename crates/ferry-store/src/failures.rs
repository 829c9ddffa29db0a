//! A workspace's failed attempts, read from the `attempt_failed` events
//! ([`crate::Store::failures`]), and their grouping for `GET /v1/errors`, written once
//! for both backends.
//!
//! A backend only reads the newest failures in the window (at most
//! [`FailureFilter::cap`], through the partial index `events_failed`, so the read never
//! scans the whole log); [`group`] folds them by (type, queue, kind, target, normalised
//! message), the message normalised by `ferry_core::message::normalise`, so failures
//! that differ only in a number or an id are one group.

use ferry_core::time::Micros;
use ferry_core::{ErrorType, JobError, JobId, Severity};
use std::collections::HashMap;

/// Which failures to read: a workspace's, since a time, optionally of one queue, kind or
/// target (a job's breaker key), the newest `cap` of them.
#[derive(Debug, Clone, Default)]
pub struct FailureFilter {
    /// Failures recorded at or after this time.
    pub since: Micros,
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    /// The most failures read, newest first.
    pub cap: usize,
}

/// One failed attempt: its event's time and error, and its job's queue, kind and target.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRow {
    pub job_id: JobId,
    pub at: Micros,
    pub queue: String,
    pub kind: String,
    /// The job's breaker key (its own, or its kind's: an http URL's origin), if any.
    pub target: Option<String>,
    pub error: JobError,
}

/// Failures alike but for the values in their messages.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureGroup {
    pub error_type: ErrorType,
    pub queue: String,
    pub kind: String,
    pub target: Option<String>,
    /// The messages, normalised (`ferry_core::message`).
    pub message: String,
    pub count: u64,
    pub first_seen: Micros,
    pub last_seen: Micros,
    /// The highest severity among them; `None` when none had one (failures recorded
    /// before severities were).
    pub severity: Option<Severity>,
    /// The job of the group's newest failure (of those at the same time, the newest job).
    pub sample_job_id: JobId,
}

/// Reads a row of the `FAILURES` statements (job id, time, queue, kind, breaker, event
/// data), the same columns in both backends.
pub(crate) fn row<R: crate::row::Columns>(r: &R) -> Result<FailureRow, R::Error> {
    let data: serde_json::Value = r.json(5)?;
    let error = serde_json::from_value(data.get("error").cloned().unwrap_or_default())
        .map_err(|e| r.invalid(5, format!("an attempt_failed event without its error: {e}")))?;
    Ok(FailureRow {
        job_id: r.uuid(0)?,
        at: r.int(1)?,
        queue: r.text(2)?,
        kind: r.text(3)?,
        target: r.opt_text(4)?,
        error,
    })
}

type Key = (ErrorType, String, String, Option<String>, String);

/// Groups failures by (type, queue, kind, target, normalised message), most frequent
/// first (then the most recent first, then by message, so the order is stable).
pub fn group(rows: Vec<FailureRow>) -> Vec<FailureGroup> {
    let mut groups: HashMap<Key, FailureGroup> = HashMap::new();
    for row in rows {
        let message = ferry_core::message::normalise(&row.error.message);
        let key = (row.error.error_type, row.queue.clone(), row.kind.clone(), row.target.clone(), message.clone());
        let g = groups.entry(key).or_insert_with(|| FailureGroup {
            error_type: row.error.error_type,
            queue: row.queue,
            kind: row.kind,
            target: row.target,
            message,
            count: 0,
            first_seen: row.at,
            last_seen: row.at,
            severity: None,
            sample_job_id: row.job_id,
        });
        g.count += 1;
        g.first_seen = g.first_seen.min(row.at);
        // Failures recorded together (one batched finish) share a time: the later job wins.
        if (row.at, row.job_id) > (g.last_seen, g.sample_job_id) {
            g.last_seen = row.at;
            g.sample_job_id = row.job_id;
        }
        g.severity = g.severity.max(row.error.severity);
    }
    let mut out: Vec<FailureGroup> = groups.into_values().collect();
    out.sort_by(|a, b| {
        b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)).then_with(|| a.message.cmp(&b.message))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: Micros, queue: &str, t: ErrorType, message: &str, severity: Option<Severity>) -> FailureRow {
        FailureRow {
            job_id: JobId::from_u128(at as u128),
            at,
            queue: queue.into(),
            kind: "fail".into(),
            target: None,
            error: JobError { severity, ..JobError::new(t, message) },
        }
    }

    #[test]
    fn failures_alike_but_for_values_are_one_group() {
        let rows = vec![
            row(30, "q", ErrorType::Network, "order 3 failed", Some(Severity::Low)),
            row(10, "q", ErrorType::Network, "order 1 failed", Some(Severity::High)),
            row(20, "q", ErrorType::Network, "order 2 failed", None),
            row(25, "other", ErrorType::Network, "order 2 failed", None),
            row(40, "q", ErrorType::Timeout, "order 9 failed", Some(Severity::Medium)),
        ];
        let groups = group(rows);
        assert_eq!(groups.len(), 3);
        let g = &groups[0];
        assert_eq!((g.count, g.first_seen, g.last_seen), (3, 10, 30));
        assert_eq!((g.queue.as_str(), g.message.as_str()), ("q", "order <n> failed"));
        assert_eq!(g.severity, Some(Severity::High), "the highest seen");
        assert_eq!(g.sample_job_id, JobId::from_u128(30), "the newest failure's job");
        // Equal counts: the most recent first.
        assert_eq!((groups[1].error_type, groups[2].queue.as_str()), (ErrorType::Timeout, "other"));
        assert_eq!(groups[2].severity, None);
    }

    #[test]
    fn of_failures_at_one_time_the_sample_is_the_newest_job() {
        let mut newer = row(30, "q", ErrorType::Network, "x", None);
        newer.job_id = JobId::from_u128(99);
        for rows in [
            vec![row(30, "q", ErrorType::Network, "x", None), newer.clone()],
            vec![newer.clone(), row(30, "q", ErrorType::Network, "x", None)],
        ] {
            assert_eq!(group(rows)[0].sample_job_id, JobId::from_u128(99));
        }
    }
}
