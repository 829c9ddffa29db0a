//! The circuit-breaker rules: admit an attempt, record what attempts said of their
//! target, and an operator's open, close, reset or settings, over one breaker row locked
//! for the transaction. The decisions are `ferry_core::breaker`'s; this module keeps the
//! row, the events and what a change does to the jobs the breaker holds back.
//!
//! Settings: the row's own (an operator's, `PUT /v1/breakers/{key}`) win over those the
//! caller resolved from the configuration (the target's, the queue's, the defaults).
//!
//! A breaker that closes lets its waiting jobs go at once: the jobs it held back are
//! `scheduled` under its key (see [`crate::FinishResult::Deferred`]), and become ready in
//! the same transaction, without waiting for the time their deferral gave them.

use super::jobs::JobTx;
use crate::{BreakerOp, BreakerOutcome, BreakerRecord, StoreError};
use async_trait::async_trait;
use ferry_core::JobId;
use ferry_core::breaker::{Admit, Breaker, BreakerSettings, Change};
use ferry_core::time::{self, Micros};
use serde_json::json;

/// The statements of the breaker rules, on the transaction the job rules use.
#[async_trait]
pub(crate) trait BreakerTx: JobTx {
    /// Locks a breaker's row for the rest of the transaction and reads it.
    async fn lock_breaker(&mut self, key: &str) -> Result<Option<BreakerRecord>, StoreError>;
    /// Writes the breaker's row (inserting it the first time).
    async fn save_breaker(&mut self, record: &BreakerRecord) -> Result<(), StoreError>;
    /// Makes the jobs held back under `key` ready now; returns their queues.
    async fn let_go(&mut self, key: &str) -> Result<Vec<String>, StoreError>;
}

/// Applies `op` to the breaker `key` (a new breaker is closed).
pub(crate) async fn apply(tx: &mut impl BreakerTx, key: &str, op: BreakerOp) -> Result<BreakerOutcome, StoreError> {
    let now = tx.now();
    let mut record = match tx.lock_breaker(key).await? {
        Some(r) => r,
        None => BreakerRecord {
            key: key.to_string(),
            breaker: Breaker { window_start: now, ..Breaker::default() },
            settings: None,
            changed_at: now,
            updated_at: now,
        },
    };
    let before = record.clone();
    let (admit, change, job) = match op {
        BreakerOp::Admit { settings } => {
            let s = record.settings.clone().unwrap_or(settings);
            let (admit, change) = record.breaker.admit(&s, now);
            (Some(admit), change, None)
        }
        BreakerOp::Report { settings, report } => {
            let s = record.settings.clone().unwrap_or(settings);
            let b = &mut record.breaker;
            // A process's successes since its last report came before this outcome.
            for _ in 0..report.successes {
                b.record(&s, now, ferry_core::breaker::Outcome::Success, false);
            }
            let change = match report.disable {
                true => b.disable(),
                false => b.record(&s, now, report.outcome, report.probe),
            };
            (None, change, report.job)
        }
        BreakerOp::Set { settings, action } => {
            use crate::BreakerAction::*;
            let change = match action {
                Open => {
                    let s = record.settings.clone().unwrap_or(settings);
                    Some(record.breaker.force_open(&s, now))
                }
                Close => {
                    let was = record.breaker.state;
                    record.breaker.reset(now);
                    (was != ferry_core::breaker::BreakerState::Closed).then_some(Change::Closed)
                }
                Settings(s) => {
                    record.settings = s;
                    None
                }
            };
            (None, change, None)
        }
    };
    if record == before {
        return Ok(BreakerOutcome { admit, record, now });
    }
    record.updated_at = now;
    if let Some(change) = change {
        record.changed_at = now;
        changed(tx, &record, change, job).await?;
    }
    tx.save_breaker(&record).await?;
    Ok(BreakerOutcome { admit, record, now })
}

/// What a change of state writes: a `breaker_changed` event on the job whose attempt
/// caused it (if any), a log line, and on a close the release of the waiting jobs.
async fn changed(
    tx: &mut impl BreakerTx,
    record: &BreakerRecord,
    change: Change,
    job: Option<JobId>,
) -> Result<(), StoreError> {
    let state = change.state();
    let mut data = json!({"breaker": record.key, "state": state.as_str(), "trips": record.breaker.trips});
    if let Change::Opened { retry_at, cool_down_ms } = change {
        data["retry_at"] = json!(time::to_datetime(retry_at));
        data["cool_down_ms"] = json!(cool_down_ms);
    }
    tracing::info!(breaker = %record.key, state = state.as_str(), trips = record.breaker.trips, "circuit breaker changed");
    if let Some(id) = job {
        tx.log(vec![(id, "breaker_changed", data)]).await?;
    }
    if change == Change::Closed {
        let mut queues = tx.let_go(&record.key).await?;
        queues.sort();
        queues.dedup();
        for q in queues {
            tx.wake(q).await?;
        }
    }
    Ok(())
}

/// Whether a breaker is closed with no failure counted in its window (none kept: never
/// failed).
pub(crate) fn quiet(record: Option<&BreakerRecord>) -> bool {
    record.is_none_or(|r| r.breaker.is_quiet())
}

/// The admission a plain read can give (see [`Breaker::peek`]), with the row's own
/// settings over `settings`; `None` when admitting must lock the row.
pub(crate) fn peek(record: Option<&BreakerRecord>, settings: &BreakerSettings, now: Micros) -> Option<Admit> {
    match record {
        None => Some(Admit::Go),
        Some(r) => r.breaker.peek(r.settings.as_ref().unwrap_or(settings), now),
    }
}
