//! Claims on SQLite: the plain claim and the rated claim through the token buckets.

use super::tx::SqliteTx;
use super::*;
use crate::rules::claims::ClaimTx;

crate::sql::statements!("../../sql/sqlite/claim_rated.sql": RATED_CANDIDATES, BUCKETS, SAVE_BUCKETS);

impl Writer {
    pub(super) fn claim(&mut self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let now = self.now;
        self.conn.prepare_cached(PROMOTE_DUE).map_err(db)?.execute(params![req.queue, now]).map_err(db)?;
        let rates = match self.rates.take() {
            Some(r) => r,
            None => load_rates(&self.conn)?,
        };
        let rated =
            rates.applies_to(&req.queue).then(|| rules::ready(rules::claims::claim_rated(&mut self.tx(), req, &rates)));
        self.rates = Some(rates);
        if let Some(claimed) = rated {
            return claimed;
        }
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let claimed = self
            .conn
            .prepare_cached(CLAIM)
            .map_err(db)?
            .query_map(params![req.queue, now, req.limit as i64, req.worker, lease_until], |r| claimed_from_row(r, now))
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        let mut out = row::in_claim_order(claimed);
        for job in &mut out {
            self.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}));
            job.worker = Some(req.worker.clone());
        }
        Ok(Claimed { jobs: out, rate_wait_ms: None })
    }
}

/// The rated claim's statements on the writer's transaction: nothing to lock, the writer
/// holds the database.
#[async_trait]
impl ClaimTx for SqliteTx<'_> {
    async fn rated_candidates(&mut self, queue: &str, window: usize) -> Result<Vec<rate::Candidate>, StoreError> {
        Ok(self
            .w
            .conn
            .prepare_cached(*RATED_CANDIDATES)?
            .query_map(params![queue, window as i64], |r| {
                use row::Columns;
                Ok(rate::Candidate {
                    id: r.uuid(0)?,
                    workspace: r.text(1)?,
                    labels: r.opt_json(2)?.unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn lock_buckets(&mut self, needed: &[(String, f64)]) -> Result<HashMap<String, rate::Bucket>, StoreError> {
        let mut buckets = HashMap::new();
        for (key, _) in needed {
            let stored = self
                .w
                .conn
                .prepare_cached(*BUCKETS)?
                .query_row(params![key], |r| Ok(rate::Bucket { tokens: r.get(0)?, refilled_at: r.get(1)? }))
                .optional()?;
            if let Some(b) = stored {
                buckets.insert(key.clone(), b);
            }
        }
        Ok(buckets)
    }

    async fn save_buckets(&mut self, buckets: &HashMap<String, rate::Bucket>) -> Result<(), StoreError> {
        for (key, b) in buckets {
            self.w.conn.prepare_cached(*SAVE_BUCKETS)?.execute(params![key, b.tokens, b.refilled_at])?;
        }
        Ok(())
    }

    async fn lease(&mut self, ids: &[JobId], req: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.w.now;
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            let mut job = self
                .w
                .conn
                .prepare_cached(CLAIM_ONE)?
                .query_row(params![id, now, req.worker, lease_until], |r| claimed_from_row(r, now))?;
            self.w.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}));
            job.worker = Some(req.worker.clone());
            jobs.push(job);
        }
        Ok(jobs)
    }
}
