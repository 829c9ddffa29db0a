//! The rules' transaction on PostgreSQL: [`PgTx`], one transaction of the pool, on which
//! each area's module implements that area's statement interface of `rules/` (`runs.rs`:
//! `RunTx`; `tokens.rs`: `TokenTx`) in this backend's SQL.
//! The transaction notes what it touched; [`PgTx::commit`] hands that to the store's
//! wake-ups after the commit.

use super::PgStore;
use crate::{StoreError, Subject};
use ferry_core::time::Micros;
use sqlx::{Postgres, Transaction};
use std::collections::BTreeSet;

/// One transaction of the rules.
pub(super) struct PgTx<'a> {
    pub(super) store: &'a PgStore,
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) now: Micros,
    /// Queues that got new work.
    pub(super) woken: BTreeSet<String>,
    /// Logs written that an open event stream may follow.
    pub(super) logs: Vec<Subject>,
}

impl<'a> PgTx<'a> {
    pub(super) async fn begin(store: &'a PgStore) -> Result<Self, StoreError> {
        let (tx, now) = store.begin().await?;
        Ok(PgTx { store, tx, now, woken: BTreeSet::new(), logs: Vec::new() })
    }

    /// Commits, then wakes this process's dispatchers of the queues that got work and the
    /// streams of the logs written (other processes' through the outbox).
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.store.wake_locally(&self.woken);
        self.store.committed(self.logs);
        Ok(())
    }
}
