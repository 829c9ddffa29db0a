//! The escalation rule: a group of a rule fires at most once per window, across every
//! node, and the firing and its `webhook` job are one transaction. See
//! [`crate::escalations`].

use super::jobs::JobTx;
use crate::StoreError;
use crate::escalations::{Fired, Firing, idempotency_key};
use async_trait::async_trait;
use ferry_core::NewJob;
use ferry_core::time::{self, Micros};

/// The statements of the escalation rule, on the transaction the job rules use.
#[async_trait]
pub(crate) trait EscalationTx: JobTx {
    /// Records that `rule` fired for `group` at `at` with `job`, unless it fired after
    /// `at - window`: one conditional upsert, so of concurrent transactions only the
    /// first to commit records it (PostgreSQL: the others wait on the row, then find it
    /// recent). Whether this transaction recorded it.
    async fn record_firing(&mut self, firing: &Firing) -> Result<bool, StoreError>;
    /// Forgets firings older than `before`: no window reaches back that far.
    async fn forget_firings(&mut self, before: Micros) -> Result<(), StoreError>;
    /// Stores a new standalone job with its first event; its queue is woken after the
    /// commit.
    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError>;
}

/// Fires `f` unless its group fired within its window: the record, then the job.
pub(crate) async fn fire(tx: &mut impl EscalationTx, mut f: Firing) -> Result<Option<Fired>, StoreError> {
    if !tx.record_firing(&f).await? {
        return Ok(None);
    }
    let longest = time::ms(ferry_core::escalation::MAX_WINDOW_MS);
    tx.forget_firings(tx.now().saturating_sub(longest).min(f.at.saturating_sub(longest))).await?;
    f.job.idempotency_key = Some(idempotency_key(&f.rule, &f.group, f.at));
    tx.insert_job(&f.job).await?;
    Ok(Some(Fired { at: f.at, job: f.job.id }))
}
