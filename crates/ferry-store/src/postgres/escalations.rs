//! Escalations on PostgreSQL (see `crate::escalations`): the signals' reads on the pool,
//! and the escalation rule's statements ([`EscalationTx`]) on a pool transaction.

use super::tx::PgTx;
use super::*;
use crate::escalations::{Fired, Firing, Occurrence, SignalRead, Signals};
use crate::rules::{self, escalations::EscalationTx};

crate::sql::statements!("../../sql/postgres/escalations.sql":
    SIGNAL_FAILURES, SIGNAL_DEAD, SIGNAL_OPENED, RECORD_FIRING, FORGET_FIRINGS,
);

/// An occurrence out of a SIGNAL_FAILURES or SIGNAL_DEAD row.
fn occurrence(r: &PgRow) -> Result<Occurrence, sqlx::Error> {
    Ok(Occurrence { workspace: r.try_get(6)?, row: crate::failures::row(r)? })
}

impl PgStore {
    pub(super) async fn read_signals(&self, read: SignalRead) -> Result<Signals, StoreError> {
        // The database's clock: the one the firings are made on, whichever node reads.
        let now: Micros = sqlx::query_scalar(*CLOCK).fetch_one(&self.pool).await?;
        let since = now.saturating_sub(time::ms(read.look_back_ms));
        let cap = i64::try_from(read.cap).unwrap_or(i64::MAX);
        let ws = &read.exclude_workspace;
        let mut out = Signals { now, ..Signals::default() };
        if read.failures {
            let rows = sqlx::query(*SIGNAL_FAILURES).bind(since).bind(ws).bind(cap).fetch_all(&self.pool).await?;
            out.failures = rows.iter().map(occurrence).collect::<Result<_, _>>().map_err(err)?;
        }
        if read.dead {
            let rows = sqlx::query(*SIGNAL_DEAD).bind(since).bind(ws).bind(cap).fetch_all(&self.pool).await?;
            out.dead = rows.iter().map(occurrence).collect::<Result<_, _>>().map_err(err)?;
        }
        if read.breakers {
            let rows = sqlx::query(*SIGNAL_OPENED).bind(since).fetch_all(&self.pool).await?;
            out.opened = rows.iter().map(row::breaker).collect::<Result<_, sqlx::Error>>().map_err(err)?;
        }
        Ok(out)
    }

    pub(super) async fn fire(&self, firing: Firing) -> Result<Option<Fired>, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let fired = rules::escalations::fire(&mut tx, firing).await?;
        // The job's queue is woken after the commit (none when nothing fired).
        tx.commit().await?;
        Ok(fired)
    }
}

#[async_trait]
impl EscalationTx for PgTx<'_> {
    async fn record_firing(&mut self, f: &Firing) -> Result<bool, StoreError> {
        let fired: Option<i64> = sqlx::query_scalar(*RECORD_FIRING)
            .bind(&f.rule)
            .bind(&f.group)
            .bind(f.at)
            .bind(f.job.id)
            .bind(time::ms(f.window_ms))
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(fired.is_some())
    }

    async fn forget_firings(&mut self, before: Micros) -> Result<(), StoreError> {
        sqlx::query(*FORGET_FIRINGS).bind(before).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError> {
        let inserted = insert_jobs(&mut self.tx, Some(self.now), std::slice::from_ref(job), &[]).await?;
        let mut events = Vec::with_capacity(inserted.len());
        let mut woken = BTreeSet::new();
        for r in &inserted {
            let state: JobState = parse_enum(&r.try_get::<String, _>(1)?)?;
            let queue: String = r.try_get(2)?;
            let (kind, data) = transition::submit_event(state, &queue, r.try_get(3)?);
            events.push((r.try_get(0)?, kind, data));
            woken.insert(queue);
        }
        insert_events(&mut self.tx, self.now, events).await?;
        self.store.notify(&mut self.tx, &woken).await?;
        self.woken.extend(woken);
        self.logs.push(Subject::Job(job.id));
        Ok(())
    }
}
