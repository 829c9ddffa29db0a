//! Reading jobs out of result rows, once for both backends. Each backend's row type
//! implements [`Columns`]; the column lists (`JOB_COLUMNS`, `CLAIMED_COLUMNS`) keep the
//! same order in both.

use crate::{ClaimedJob, JobRecord, QueueStats};
use ferry_core::JobId;
use ferry_core::time::Micros;
use serde::de::DeserializeOwned;
use std::str::FromStr;

/// Typed access to one result row.
pub(crate) trait Columns {
    type Error;
    fn uuid(&self, i: usize) -> Result<JobId, Self::Error>;
    fn opt_uuid(&self, i: usize) -> Result<Option<JobId>, Self::Error>;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    /// Any integer column, widened.
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// A value that was read but does not make sense.
    fn invalid(&self, i: usize, why: String) -> Self::Error;

    fn parsed<T: FromStr<Err = String>>(&self, i: usize) -> Result<T, Self::Error> {
        self.text(i)?.parse().map_err(|e| self.invalid(i, e))
    }

    fn json<T: DeserializeOwned>(&self, i: usize) -> Result<T, Self::Error> {
        serde_json::from_str(&self.text(i)?).map_err(|e| self.invalid(i, e.to_string()))
    }

    fn opt_json<T: DeserializeOwned>(&self, i: usize) -> Result<Option<T>, Self::Error> {
        self.opt_text(i)?.map(|t| serde_json::from_str(&t).map_err(|e| self.invalid(i, e.to_string()))).transpose()
    }

    fn small(&self, i: usize) -> Result<u32, Self::Error> {
        u32::try_from(self.int(i)?.max(0)).map_err(|e| self.invalid(i, e.to_string()))
    }
}

/// A row of `CLAIMED_COLUMNS`: id, kind, queue, input, attempt, attempt_base,
/// max_attempts, backoff, timeout_ms, deadline_at, run_at, soft_timeout_ms, workspace, cache_key,
/// run_id, priority, breaker, ordering_key, user_id.
pub(crate) fn claimed<R: Columns>(r: &R, started_at: Micros) -> Result<ClaimedJob, R::Error> {
    let attempt = r.small(4)?;
    Ok(ClaimedJob {
        id: r.uuid(0)?,
        kind: r.text(1)?,
        queue: r.text(2)?,
        input: r.text(3)?,
        attempt,
        attempts_counted: attempt.saturating_sub(r.small(5)?),
        max_attempts: r.small(6)?,
        backoff: r.json(7)?,
        timeout_ms: r.int(8)?.max(0) as u64,
        deadline_at: r.opt_int(9)?,
        run_at: r.int(10)?,
        soft_timeout_ms: r.opt_int(11)?.map(|t| t.max(0) as u64),
        workspace: r.text(12)?,
        cache_key: r.opt_text(13)?,
        run_id: r.opt_uuid(14)?,
        priority: r.int(15)? as i32,
        breaker: r.opt_text(16)?,
        ordering_key: r.opt_text(17)?,
        user: r.text(18)?,
        started_at,
        worker: None,
    })
}

/// A row of `JOB_COLUMNS`.
pub(crate) fn job<R: Columns>(r: &R) -> Result<JobRecord, R::Error> {
    Ok(JobRecord {
        id: r.uuid(0)?,
        workspace: r.text(1)?,
        user: r.text(2)?,
        kind: r.text(3)?,
        queue: r.text(4)?,
        state: r.parsed(5)?,
        priority: i32::try_from(r.int(6)?).map_err(|e| r.invalid(6, e.to_string()))?,
        input: r.json(7)?,
        labels: r.opt_json(8)?.unwrap_or_default(),
        max_attempts: r.small(9)?,
        backoff: r.json(10)?,
        timeout_ms: r.int(11)?.max(0) as u64,
        total_timeout_ms: r.opt_int(12)?.map(|t| t.max(0) as u64),
        idempotency_key: r.opt_text(13)?,
        created_at: r.int(14)?,
        run_at: r.int(15)?,
        deadline_at: r.opt_int(16)?,
        attempt: r.small(17)?,
        attempt_base: r.small(18)?,
        worker: r.opt_text(19)?,
        lease_expires_at: r.opt_int(20)?,
        finished_at: r.opt_int(21)?,
        updated_at: r.int(22)?,
        output: r.opt_json(23)?,
        error: r.opt_json(24)?,
        soft_timeout_ms: r.opt_int(25)?.map(|t| t.max(0) as u64),
        breaker: r.opt_text(26)?,
        ordering_key: r.opt_text(27)?,
        attempts: Vec::new(),
    })
}

/// A row of `BREAKER_COLUMNS`: key, data, settings, changed_at, updated_at.
pub(crate) fn breaker<R: Columns>(r: &R) -> Result<crate::BreakerRecord, R::Error> {
    Ok(crate::BreakerRecord {
        key: r.text(0)?,
        breaker: r.json(1)?,
        settings: r.opt_json(2)?,
        changed_at: r.int(3)?,
        updated_at: r.int(4)?,
    })
}

/// The text columns a breaker's row is written with: its state, its data and its own
/// settings, as JSON.
pub(crate) fn breaker_texts(b: &crate::BreakerRecord) -> (&'static str, String, Option<String>) {
    let data = serde_json::to_string(&b.breaker).unwrap_or_default();
    let settings = b.settings.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default());
    (b.breaker.state.as_str(), data, settings)
}

/// Folds `(queue, state, count)` rows of the queue-count query into one entry per queue.
pub(crate) fn queue_stats(rows: impl IntoIterator<Item = (String, String, i64)>) -> Vec<QueueStats> {
    let mut map: std::collections::BTreeMap<String, QueueStats> = Default::default();
    for (queue, state, n) in rows {
        let s = map.entry(queue.clone()).or_insert_with(|| QueueStats { queue, ..Default::default() });
        let n = n.max(0) as u64;
        match state.as_str() {
            "queued" => s.queued = n,
            "running" => s.running = n,
            "scheduled" => s.scheduled = n,
            "retrying" => s.retrying = n,
            _ => s.dead = n,
        }
    }
    map.into_values().collect()
}

/// Claimed jobs sorted into claim order (an `UPDATE … RETURNING` has no order of its own):
/// see [`ClaimedJob::claim_order`].
pub(crate) fn in_claim_order(mut claimed: Vec<ClaimedJob>) -> Vec<ClaimedJob> {
    claimed.sort_by(ClaimedJob::claim_order);
    claimed
}

/// A row of `WORKERS`: id, node, queues (JSON), started_at, last_heartbeat, running.
pub(crate) fn worker<R: Columns>(r: &R) -> Result<crate::WorkerInfo, R::Error> {
    Ok(crate::WorkerInfo {
        id: r.text(0)?,
        node: r.text(1)?,
        queues: r.json(2)?,
        started_at: r.int(3)?,
        last_heartbeat: r.int(4)?,
        running: r.int(5)?.max(0) as u64,
    })
}

/// A row of `HELD_JOBS`: id, user_id, queue, run_at.
pub(crate) fn held_job<R: Columns>(r: &R) -> Result<crate::rules::jobs::HeldJob, R::Error> {
    Ok(crate::rules::jobs::HeldJob { id: r.uuid(0)?, user: r.text(1)?, queue: r.text(2)?, run_at: r.int(3)? })
}

/// A row of `QUEUED_RUNS`: id, user_id, workflow, version.
pub(crate) fn queued_run<R: Columns>(r: &R) -> Result<crate::rules::runs::QueuedRun, R::Error> {
    Ok(crate::rules::runs::QueuedRun { id: r.uuid(0)?, user: r.text(1)?, workflow: r.text(2)?, version: r.small(3)? })
}
