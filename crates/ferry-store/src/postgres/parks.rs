//! Parks other processes can take (see [`crate::park`]).
//!
//! A worker process (`ferry worker`, [`PgOptions::shared_parks`]) keeps each parked claim
//! in `claim_parks` as well as in memory, and tells every node on the parks channel that
//! the queue has one. A submission on any node that makes jobs ready in that queue locks
//! the waiting parks (`SKIP LOCKED`), runs the ordinary claim for each in its own
//! transaction, leasing the new jobs to the parked worker, and records what it leased in
//! the row, off the park's free slots; the new jobs' `started_at` is stamped inside the
//! submission, as with the embedded workers' parks. The rest of the slots stay takeable
//! until the worker withdraws, so a submission right behind is leased there too. Its commit wakes the queue everywhere; the worker's
//! dispatcher wakes, withdraws the park (deletes the row, waiting for the submission that
//! holds it) and reads the jobs it was leased. A job submitted to an idle queue of the
//! scale-out deployment thus starts one commit sooner: no notification, wake-up and
//! claim transaction between the submission's commit and the lease.
//!
//! **Nothing leased is left behind.** The row is the park: a submission takes from it
//! under the row lock, and the worker's withdrawal deletes it under the same lock, so
//! either the submission committed first (the withdrawal finds its ids) or the withdrawal
//! did (no submission sees the row). A submission of the worker's own process takes from
//! the row the same way; its commit wakes the queue here as anywhere. A transaction that
//! fails leaves the row as it was.
//!
//! **Cost where nobody parks.** A submission looks for parks only on queues that may have
//! one: every node keeps, per queue, whether it heard of a park since a look found none
//! (the parks channel; a lost notification connection means "maybe" for every queue).
//! Missing a park only costs the old path: the worker's wake-up and its own claim.
//!
//! **A worker that dies parked.** Its park may be taken until it expires ([`PARK_TTL`]):
//! jobs leased to it in that time come back after their lease, with `worker_lost`, like
//! any job of a dead worker. Rows a minute past their expiry are deleted by the next
//! park.

use super::*;
use crate::park::Shared;
use std::sync::Mutex;
use uuid::Uuid;

crate::sql::statements!("../../sql/postgres/parks.sql": PARK, WAITING, TAKEN, UNPARK, LEASED);

/// How long a park may be taken. A dispatcher's idle wait is at most its poll interval
/// (a second by default) before it withdraws and parks again, so a live worker's park
/// never expires; a dead worker's is skipped after this.
const PARK_TTL: Micros = 3_000_000;

/// This process's side of the parks in `claim_parks`: whether it parks there, and which
/// queues may have parks to take.
pub(super) struct SharedParks {
    /// This process parks there (a worker process); otherwise it only takes others' parks.
    pub(super) enabled: bool,
    /// Where parks are announced: the queue's name.
    pub(super) channel: String,
    hint: Mutex<Hint>,
}

/// Which queues may have a park in the table.
struct Hint {
    /// Moved on by every park heard of: a look begun before one does not clear its queue.
    generation: u64,
    /// Queues known: `true` a park was heard of, `false` a look found none.
    known: HashMap<String, bool>,
    /// What an unknown queue may have (`true` at start and after a lost connection).
    unknown: bool,
}

impl SharedParks {
    pub(super) fn new(enabled: bool, channel: String) -> Self {
        SharedParks { enabled, channel, hint: Mutex::new(Hint { generation: 0, known: HashMap::new(), unknown: true }) }
    }

    fn hint(&self) -> std::sync::MutexGuard<'_, Hint> {
        self.hint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A park on `queue` was announced.
    pub(super) fn heard(&self, queue: &str) {
        let mut hint = self.hint();
        hint.generation += 1;
        hint.known.insert(queue.to_string(), true);
    }

    /// Announcements may have been missed: any queue may have a park.
    pub(super) fn missed(&self) {
        let mut hint = self.hint();
        hint.generation += 1;
        hint.known.clear();
        hint.unknown = true;
    }

    /// Of `queues`, those that may have a park, and the generation to hand [`Self::take`].
    pub(super) fn may_have<'a>(&self, queues: impl IntoIterator<Item = &'a String>) -> (Vec<String>, u64) {
        let hint = self.hint();
        let may = queues.into_iter().filter(|q| *hint.known.get(q.as_str()).unwrap_or(&hint.unknown)).cloned();
        (may.collect(), hint.generation)
    }

    /// A look at `queues` begun at `generation` found parks on `found` only.
    fn looked(&self, queues: &[String], found: &BTreeSet<String>, generation: u64) {
        let mut hint = self.hint();
        if hint.generation != generation {
            return;
        }
        for q in queues.iter().filter(|q| !found.contains(*q)) {
            hint.known.insert(q.clone(), false);
        }
    }

    /// Inside a submission's transaction that made jobs ready in `queues` (none of them
    /// rated; from [`Self::may_have`] at `generation`): takes from the parks waiting there,
    /// leasing the new jobs to them. Returns the jobs leased.
    pub(super) async fn take(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        queues: Vec<String>,
        generation: u64,
    ) -> Result<Vec<JobId>, StoreError> {
        let rows = sqlx::query(*WAITING).bind(&queues).fetch_all(&mut **tx).await?;
        let found: BTreeSet<String> = rows.iter().map(|r| r.try_get(1)).collect::<Result<_, _>>()?;
        self.looked(&queues, &found, generation);
        let mut leased = Vec::new();
        // Parks in turn while their queue has jobs left: the first that comes back short
        // has drained it, and the rest are left as they are.
        let mut drained: BTreeSet<String> = BTreeSet::new();
        for r in &rows {
            let (id, queue): (Uuid, String) = (r.try_get(0)?, r.try_get(1)?);
            if drained.contains(&queue) {
                continue;
            }
            let slots: i32 = r.try_get(3)?;
            let lease: i64 = r.try_get(4)?;
            let req = ClaimRequest {
                queue: queue.clone(),
                limit: slots.max(1) as usize,
                worker: r.try_get(2)?,
                lease_ms: (lease / 1000).max(1) as u64,
            };
            let claimed = claim_plain(&mut **tx, &req, None, false).await?;
            if claimed.jobs.len() < req.limit {
                drained.insert(queue);
            }
            if claimed.jobs.is_empty() {
                continue;
            }
            let ids: Vec<JobId> = claimed.jobs.iter().map(|j| j.id).collect();
            sqlx::query(*TAKEN).bind(id).bind(&ids).execute(&mut **tx).await?;
            leased.extend(ids);
        }
        Ok(leased)
    }
}

impl PgStore {
    /// Parks `req` in the table and in memory (a worker process; see the module docs).
    pub(super) fn park_shared(&self, req: ClaimRequest) -> Parked {
        let id = Uuid::new_v4();
        self.shared.heard(&req.queue);
        let insert = sqlx::query(*PARK)
            .bind(id)
            .bind(req.queue.clone())
            .bind(req.worker.clone())
            .bind(req.limit.min(i32::MAX as usize) as i32)
            .bind(time::ms(req.lease_ms))
            .bind(PARK_TTL)
            .bind(self.shared.channel.clone());
        let pool = self.pool.clone();
        let inserting = tokio::spawn(async move {
            insert
                .execute(&pool)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "cannot park a claim in the database"))
        });
        Parked::shared(Box::new(SharedPark {
            id,
            worker: req.worker,
            inserting: Some(inserting),
            pool: self.pool.clone(),
        }))
    }
}

/// A dispatcher's park in the table.
struct SharedPark {
    id: Uuid,
    worker: String,
    inserting: Option<JoinHandle<Result<sqlx::postgres::PgQueryResult, sqlx::Error>>>,
    pool: PgPool,
}

impl SharedPark {
    /// Deletes the row once it was written; what submissions leased to it, if any did.
    async fn unpark(&mut self) -> Option<Claimed> {
        match self.inserting.take()?.await {
            Ok(Ok(_)) => {}
            // Never written: nobody could take it.
            _ => return None,
        }
        let read = async {
            let taken: Option<Option<Vec<Uuid>>> =
                sqlx::query_scalar(*UNPARK).bind(self.id).fetch_optional(&self.pool).await?;
            let Some(Some(taken)) = taken else { return Ok(None) };
            let rows = sqlx::query(*LEASED).bind(&taken).bind(&self.worker).fetch_all(&self.pool).await?;
            let mut jobs = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut job = claimed_from_row(r, r.try_get(19)?)?;
                job.worker = Some(self.worker.clone());
                jobs.push(job);
            }
            Ok::<_, sqlx::Error>(Some(Claimed { jobs, rate_wait_ms: None }))
        };
        match read.await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, park = %self.id, "cannot read a parked claim back; what it was leased runs after its lease");
                None
            }
        }
    }
}

#[async_trait]
impl Shared for SharedPark {
    /// Nothing is handed over in memory: a taking submission's commit wakes the queue, and
    /// the dispatcher withdraws.
    async fn delivered(&mut self) -> Claimed {
        std::future::pending().await
    }

    async fn withdraw(mut self: Box<Self>) -> Option<Claimed> {
        self.unpark().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_queue_is_looked_at_until_a_look_finds_no_park_and_again_once_one_is_heard_of() {
        let parks = SharedParks::new(false, "c".into());
        let (may, g) = parks.may_have(&queues(&["a", "b"]));
        assert_eq!(may, ["a", "b"], "nothing known at start: any queue may have one");
        parks.looked(&may, &queues(&["b"]), g);
        assert_eq!(parks.may_have(&queues(&["a", "b"])).0, ["b"]);
        let (_, g) = parks.may_have(&queues(&["b"]));
        // A park announced while a look that finds none is under way is not forgotten.
        parks.heard("b");
        parks.looked(&["b".to_string()], &queues(&[]), g);
        assert_eq!(parks.may_have(&queues(&["a", "b"])).0, ["b"]);
        let (_, g) = parks.may_have(&queues(&["b"]));
        parks.looked(&["b".to_string()], &queues(&[]), g);
        assert!(parks.may_have(&queues(&["a", "b"])).0.is_empty());
        parks.heard("a");
        assert_eq!(parks.may_have(&queues(&["a", "b"])).0, ["a"]);
        parks.missed();
        assert_eq!(parks.may_have(&queues(&["a", "b"])).0, ["a", "b"]);
    }
}
