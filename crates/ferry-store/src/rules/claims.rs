//! The rated claim: which queued jobs a claim may start under the rates in force (see
//! [`crate::rate`] for the buckets and the choice). The plain claim of an unrated queue is
//! one statement per backend (`claim.sql`), with no rule to share.
//!
//! The rule runs in one transaction of the caller's: the candidates in claim order, the
//! buckets they draw on (locked until the commit on PostgreSQL, where many processes claim
//! at once), the choice, the buckets written back, the chosen jobs leased.

use super::jobs::JobTx;
use crate::rate::{self, Bucket, Candidate, Rates};
use crate::{ClaimRequest, Claimed, ClaimedJob, StoreError};
use async_trait::async_trait;
use ferry_core::JobId;
use std::collections::HashMap;

/// The statements of the rated claim, one backend's implementation each; the clock is the
/// job rules' ([`JobTx::now`]).
#[async_trait]
pub(crate) trait ClaimTx: JobTx {
    /// Up to `window` queued jobs of the queue in claim order, skipping paused shares and
    /// a paused queue (PostgreSQL: rows locked with `SKIP LOCKED`).
    async fn rated_candidates(&mut self, queue: &str, window: usize) -> Result<Vec<Candidate>, StoreError>;
    /// The stored buckets among `needed` (key, rate), locked until the commit on
    /// PostgreSQL; one not stored yet may be missing (it starts full).
    async fn lock_buckets(&mut self, needed: &[(String, f64)]) -> Result<HashMap<String, Bucket>, StoreError>;
    async fn save_buckets(&mut self, buckets: &HashMap<String, Bucket>) -> Result<(), StoreError>;
    /// Leases these queued jobs to the claim's worker and logs their `started` events;
    /// returns them in claim order.
    async fn lease(&mut self, ids: &[JobId], req: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError>;
}

/// A claim through the rate buckets.
pub(crate) async fn claim_rated(
    tx: &mut impl ClaimTx,
    req: &ClaimRequest,
    rates: &Rates,
) -> Result<Claimed, StoreError> {
    let candidates = tx.rated_candidates(&req.queue, rates.window(&req.queue, req.limit)).await?;
    let needed = rates.buckets_for(&req.queue, &candidates);
    let mut buckets = tx.lock_buckets(&needed).await?;
    let choice = rate::choose(rates, &req.queue, &candidates, req.limit, &needed, &mut buckets, tx.now());
    tx.save_buckets(&buckets).await?;
    let jobs = match choice.chosen.is_empty() {
        true => Vec::new(),
        false => tx.lease(&choice.chosen, req).await?,
    };
    Ok(Claimed { jobs, rate_wait_ms: choice.wait_ms() })
}
