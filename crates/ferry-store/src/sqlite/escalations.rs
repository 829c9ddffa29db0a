//! Escalations on SQLite (see `crate::escalations`): the signals' reads on a read
//! connection, and the escalation rule's statements ([`EscalationTx`]) on the writer's
//! transaction.

use super::tx::SqliteTx;
use super::*;
use crate::escalations::{Fired, Firing, Occurrence, SignalRead, Signals};
use crate::rules::escalations::EscalationTx;

crate::sql::statements!("../../sql/sqlite/escalations.sql":
    SIGNAL_FAILURES, SIGNAL_DEAD, SIGNAL_OPENED, RECORD_FIRING, FORGET_FIRINGS,
);

/// An occurrence out of a SIGNAL_FAILURES or SIGNAL_DEAD row.
fn occurrence(r: &Row<'_>) -> rusqlite::Result<Occurrence> {
    Ok(Occurrence { workspace: r.get(6)?, row: crate::failures::row(r)? })
}

impl SqliteStore {
    pub(super) async fn read_signals(&self, read: SignalRead) -> Result<Signals, StoreError> {
        self.read(move |c| {
            // The writer's clock is this process's: the same clock the firings are made on.
            let now = time::now_micros();
            let since = now.saturating_sub(time::ms(read.look_back_ms));
            let cap = i64::try_from(read.cap).unwrap_or(i64::MAX);
            let ws = &read.exclude_workspace;
            let mut out = Signals { now, ..Signals::default() };
            if read.failures {
                out.failures = c
                    .prepare_cached(*SIGNAL_FAILURES)?
                    .query_map(params![since, ws, cap], occurrence)?
                    .collect::<rusqlite::Result<_>>()?;
            }
            if read.dead {
                out.dead = c
                    .prepare_cached(*SIGNAL_DEAD)?
                    .query_map(params![since, ws, cap], occurrence)?
                    .collect::<rusqlite::Result<_>>()?;
            }
            if read.breakers {
                out.opened = c
                    .prepare_cached(*SIGNAL_OPENED)?
                    .query_map(params![since], |r| row::breaker(r))?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn fire(&self, firing: Firing) -> Result<Option<Fired>, StoreError> {
        self.write(|r| Cmd::Escalate(Box::new(firing), r)).await
    }
}

impl Writer {
    pub(super) fn escalate(&mut self, firing: Firing) -> Result<Option<Fired>, StoreError> {
        rules::ready(rules::escalations::fire(&mut self.tx(), firing))
    }
}

#[async_trait]
impl EscalationTx for SqliteTx<'_> {
    async fn record_firing(&mut self, f: &Firing) -> Result<bool, StoreError> {
        let window = time::ms(f.window_ms);
        let fired: Option<i64> = self
            .w
            .conn
            .prepare_cached(*RECORD_FIRING)?
            .query_row(params![f.rule, f.group, f.at, f.job.id, window], |r| r.get(0))
            .optional()?;
        Ok(fired.is_some())
    }

    async fn forget_firings(&mut self, before: Micros) -> Result<(), StoreError> {
        self.w.conn.prepare_cached(*FORGET_FIRINGS)?.execute(params![before])?;
        Ok(())
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError> {
        self.w.insert_job(job, None, None)?;
        Ok(())
    }
}
