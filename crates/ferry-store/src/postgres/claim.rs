//! Claims on PostgreSQL: the plain one-statement claim and the rated claim through the
//! token buckets, with the rates cache.

use super::tx::PgTx;
use super::*;
use crate::rules::{self, claims::ClaimTx};

crate::sql::statements!("../../sql/postgres/claim_rated.sql":
    RATED_QUEUES, RATED_SHARES, RATED_LABELS, RATED_CANDIDATES, CREATE_BUCKETS, BUCKETS, SAVE_BUCKETS,
);

impl PgStore {
    /// Every rate in force, read through a cache of [`RATES_FRESH_FOR`].
    pub(super) async fn rates(&self) -> Result<Arc<Rates>, StoreError> {
        if let Some(rates) = self.rates.fresh() {
            return Ok(rates);
        }
        self.rates_on(&mut *self.pool.acquire().await?).await
    }

    /// Reads the rates on `conn` (inside a transaction, so as to need no second
    /// connection from the pool) unless the cache is fresh.
    pub(super) async fn rates_on(&self, conn: &mut sqlx::PgConnection) -> Result<Arc<Rates>, StoreError> {
        if let Some(rates) = self.rates.fresh() {
            return Ok(rates);
        }
        let generation = self.rates.generation();
        let mut rates = Rates::default();
        for r in sqlx::query(*RATED_QUEUES).fetch_all(&mut *conn).await? {
            rates.queues.insert(r.try_get(0)?, r.try_get(1)?);
        }
        for r in sqlx::query(*RATED_SHARES).fetch_all(&mut *conn).await? {
            rates.shares.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
        }
        for r in sqlx::query(*RATED_LABELS).fetch_all(&mut *conn).await? {
            rates.labels.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
        }
        let rates = Arc::new(rates);
        self.rates.keep(generation, &rates);
        Ok(rates)
    }

    /// A claim through the rate buckets (see [`crate::rules::claims`]), in one
    /// transaction.
    pub(super) async fn claim_rated(&self, req: &ClaimRequest, rates: &Rates) -> Result<Claimed, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let claimed = rules::claims::claim_rated(&mut tx, req, rates).await?;
        tx.commit().await?;
        Ok(claimed)
    }
}

/// The rated claim's statements: candidates locked with `SKIP LOCKED` (another claim
/// takes the others), buckets created full where missing and locked in key order (so
/// two claims never deadlock), written back in one statement.
#[async_trait]
impl ClaimTx for PgTx<'_> {
    async fn rated_candidates(&mut self, queue: &str, window: usize) -> Result<Vec<rate::Candidate>, StoreError> {
        let rows = sqlx::query(*RATED_CANDIDATES).bind(queue).bind(window as i64).fetch_all(&mut *self.tx).await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for r in &rows {
            let labels: Option<String> = r.try_get(2)?;
            candidates.push(rate::Candidate {
                id: r.try_get(0)?,
                workspace: r.try_get(1)?,
                labels: labels.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default(),
            });
        }
        Ok(candidates)
    }

    async fn lock_buckets(&mut self, needed: &[(String, f64)]) -> Result<HashMap<String, rate::Bucket>, StoreError> {
        let keys: Vec<&str> = needed.iter().map(|(k, _)| k.as_str()).collect();
        let fulls: Vec<f64> = needed.iter().map(|(_, r)| rate::burst(*r)).collect();
        sqlx::query(*CREATE_BUCKETS).bind(&keys).bind(&fulls).bind(self.now).execute(&mut *self.tx).await?;
        let mut buckets = HashMap::new();
        for r in sqlx::query(*BUCKETS).bind(&keys).fetch_all(&mut *self.tx).await? {
            buckets
                .insert(r.try_get::<String, _>(0)?, rate::Bucket { tokens: r.try_get(1)?, refilled_at: r.try_get(2)? });
        }
        Ok(buckets)
    }

    async fn save_buckets(&mut self, buckets: &HashMap<String, rate::Bucket>) -> Result<(), StoreError> {
        let (mut keys, mut tokens, mut ats) = (Vec::new(), Vec::new(), Vec::new());
        for (k, b) in buckets {
            keys.push(k.as_str());
            tokens.push(b.tokens);
            ats.push(b.refilled_at);
        }
        sqlx::query(*SAVE_BUCKETS).bind(&keys).bind(&tokens).bind(&ats).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn lease(&mut self, ids: &[JobId], req: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let mut claimed = Vec::with_capacity(ids.len());
        for r in sqlx::query(CLAIM_IDS)
            .bind(ids)
            .bind(&req.worker)
            .bind(time::ms(req.lease_ms))
            .fetch_all(&mut *self.tx)
            .await?
        {
            let mut job = claimed_from_row(&r, r.try_get(19)?)?;
            job.worker = Some(req.worker.clone());
            self.logs.push(Subject::Job(job.id));
            claimed.push(job);
        }
        Ok(row::in_claim_order(claimed))
    }
}

impl PgStore {
    /// The claim of a queue no rate applies to, from the queue's head when this process
    /// knows one (see `postgres/head.rs`), completed over the whole queue when that comes
    /// back short.
    pub(super) async fn claim_from_head(&self, req: &ClaimRequest) -> Result<Claimed, StoreError> {
        let ticket = self.heads.start(&req.queue);
        let first = claim_plain(&self.pool, req, ticket.after, true).await?;
        if ticket.after.is_none() || first.jobs.len() >= req.limit {
            self.heads.claimed(&req.queue, ticket, ticket.after.is_none(), last_if_full(&first, req.limit));
            return Ok(first);
        }
        let rest = ClaimRequest { limit: req.limit - first.jobs.len(), ..req.clone() };
        let more = claim_plain(&self.pool, &rest, None, true).await?;
        self.heads.claimed(&req.queue, ticket, true, last_if_full(&more, rest.limit));
        let mut jobs = first.jobs;
        jobs.extend(more.jobs);
        Ok(Claimed { jobs: row::in_claim_order(jobs), rate_wait_ms: None })
    }
}

/// The key of a claim's last job (they are in claim order) when it took all it asked for.
fn last_if_full(claimed: &Claimed, limit: usize) -> Option<head::Key> {
    let last = claimed.jobs.last().filter(|_| claimed.jobs.len() >= limit)?;
    Some(head::Key { priority: last.priority, run_at: last.run_at, id: last.id })
}

/// The claim of a queue no rate applies to (`claim.sql`), over the whole queue or after
/// `after`: on the pool, or inside the transaction of a submission that runs a parked
/// claim.
pub(super) async fn claim_plain<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    req: &ClaimRequest,
    after: Option<head::Key>,
    alone: bool,
) -> Result<Claimed, StoreError> {
    let query = sqlx::query(match (after, alone) {
        (None, false) => CLAIM.as_str(),
        (None, true) => CLAIM_ALONE.as_str(),
        (Some(_), _) => CLAIM_AFTER.as_str(),
    })
    .bind(&req.queue)
    .bind(req.limit as i64)
    .bind(&req.worker)
    .bind(time::ms(req.lease_ms));
    let query = match after {
        None => query,
        Some(k) => query.bind(k.priority).bind(k.run_at).bind(k.id),
    };
    let rows = query.fetch_all(ex).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut job = claimed_from_row(r, r.try_get(19)?)?;
        job.worker = Some(req.worker.clone());
        claimed.push(job);
    }
    Ok(Claimed { jobs: row::in_claim_order(claimed), rate_wait_ms: None })
}

/// The rates this process read, for [`RATES_FRESH_FOR`]. A read that began before a
/// change committed here is never kept after it: [`RatesCache::forget`] (called after the
/// commit) moves the generation on, and [`RatesCache::keep`] refuses a read taken under an
/// older one. Without that, a claim reading the old rates while a rate was being set could
/// put them back in the cache for a whole second of unlimited dispatch.
#[derive(Default)]
pub(super) struct RatesCache(std::sync::Mutex<CachedRates>);

#[derive(Default)]
struct CachedRates {
    generation: u64,
    held: Option<(std::time::Instant, Arc<Rates>)>,
}

impl RatesCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedRates> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self) -> Option<Arc<Rates>> {
        match &self.lock().held {
            Some((at, rates)) if at.elapsed() < RATES_FRESH_FOR => Some(rates.clone()),
            _ => None,
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn keep(&self, generation: u64, rates: &Arc<Rates>) {
        let mut cache = self.lock();
        if cache.generation == generation {
            cache.held = Some((std::time::Instant::now(), rates.clone()));
        }
    }

    /// Called after a change to the rates has committed.
    pub(super) fn forget(&self) {
        let mut cache = self.lock();
        cache.generation += 1;
        cache.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_begun_before_a_change_is_not_kept_after_it() {
        let cache = RatesCache::default();
        let stale = Arc::new(Rates::default());
        // A claim starts reading, a rate is set and committed, the claim's read arrives.
        let began = cache.generation();
        cache.forget();
        cache.keep(began, &stale);
        assert!(cache.fresh().is_none(), "the stale read was kept");
        // A read begun after the change is kept.
        let began = cache.generation();
        cache.keep(began, &stale);
        assert!(cache.fresh().is_some());
    }
}
