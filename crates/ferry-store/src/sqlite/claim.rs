//! Claims on SQLite: the plain claim and the rated claim through the token buckets.

use super::*;

crate::sql::statements!("../../sql/sqlite/claim_rated.sql": RATED_CANDIDATES, BUCKETS, SAVE_BUCKETS);

impl Writer {
    pub(super) fn claim(&mut self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let now = self.now;
        self.conn.prepare_cached(PROMOTE_DUE).map_err(db)?.execute(params![req.queue, now]).map_err(db)?;
        let rates = match self.rates.take() {
            Some(r) => r,
            None => load_rates(&self.conn)?,
        };
        let rated = rates.applies_to(&req.queue).then(|| self.claim_rated(req, &rates));
        self.rates = Some(rates);
        if let Some(claimed) = rated {
            return claimed;
        }
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let mut claimed = self
            .conn
            .prepare_cached(CLAIM)
            .map_err(db)?
            .query_map(params![req.queue, now, req.limit as i64, req.worker, lease_until], |r| {
                Ok((claimed_from_row(r, now)?, r.get::<_, i32>(15)?))
            })
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        claimed.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.run_at.cmp(&b.0.run_at)).then(a.0.id.cmp(&b.0.id)));
        let mut out = Vec::with_capacity(claimed.len());
        for (mut job, _) in claimed {
            self.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}))?;
            job.worker = Some(req.worker.clone());
            out.push(job);
        }
        Ok(Claimed { jobs: out, rate_wait_ms: None })
    }

    /// A claim through the rate buckets (see [`crate::rate`]): the candidates in claim
    /// order, the buckets they draw on, the choice, then the chosen jobs leased and the
    /// buckets written back, all in the writer's transaction.
    pub(super) fn claim_rated(&mut self, req: &ClaimRequest, rates: &Rates) -> Result<Claimed, StoreError> {
        let now = self.now;
        let candidates = self
            .conn
            .prepare_cached(*RATED_CANDIDATES)?
            .query_map(params![req.queue, rates.window(&req.queue, req.limit) as i64], |r| {
                use row::Columns;
                Ok(rate::Candidate {
                    id: r.uuid(0)?,
                    workspace: r.text(1)?,
                    labels: r.opt_json(2)?.unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let needed = rates.buckets_for(&req.queue, &candidates);
        let mut buckets = HashMap::new();
        for (key, _) in &needed {
            let stored = self
                .conn
                .prepare_cached(*BUCKETS)?
                .query_row(params![key], |r| Ok(rate::Bucket { tokens: r.get(0)?, refilled_at: r.get(1)? }))
                .optional()?;
            if let Some(b) = stored {
                buckets.insert(key.clone(), b);
            }
        }
        let choice = rate::choose(rates, &req.queue, &candidates, req.limit, &needed, &mut buckets, now);
        for (key, b) in &buckets {
            self.conn.prepare_cached(*SAVE_BUCKETS)?.execute(params![key, b.tokens, b.refilled_at])?;
        }
        let lease_until = now.saturating_add(time::ms(req.lease_ms));
        let mut jobs = Vec::with_capacity(choice.chosen.len());
        for id in &choice.chosen {
            let mut job = self
                .conn
                .prepare_cached(CLAIM_ONE)?
                .query_row(params![id, now, req.worker, lease_until], |r| claimed_from_row(r, now))?;
            self.event(job.id, "started", json!({"attempt": job.attempt, "worker": req.worker}))?;
            job.worker = Some(req.worker.clone());
            jobs.push(job);
        }
        Ok(Claimed { jobs, rate_wait_ms: choice.wait_ms() })
    }
}
