//! Circuit breakers on SQLite: the breaker rules' statements ([`BreakerTx`]) on the
//! writer's transaction, and the reads.

use super::tx::SqliteTx;
use super::*;
use crate::rules::breakers::BreakerTx;
use crate::{BreakerOp, BreakerOutcome, BreakerRecord};

crate::sql::statements!("../../sql/sqlite/breakers.sql": LOCK_BREAKER, SAVE_BREAKER, LET_GO, BREAKERS);

impl SqliteStore {
    pub(super) async fn apply_breaker(&self, key: &str, op: BreakerOp) -> Result<BreakerOutcome, StoreError> {
        self.write(|r| Cmd::Breaker(key.to_string(), op, r)).await
    }

    pub(super) async fn read_breakers(&self, key: Option<&str>) -> Result<Vec<BreakerRecord>, StoreError> {
        let key = key.map(str::to_string);
        self.read(move |c| c.prepare_cached(*BREAKERS)?.query_map(params![key], |r| row::breaker(r))?.collect()).await
    }
}

impl Writer {
    pub(super) fn breaker(&mut self, key: &str, op: BreakerOp) -> Result<BreakerOutcome, StoreError> {
        rules::ready(rules::breakers::apply(&mut self.tx(), key, op))
    }
}

#[async_trait]
impl BreakerTx for SqliteTx<'_> {
    async fn lock_breaker(&mut self, key: &str) -> Result<Option<BreakerRecord>, StoreError> {
        Ok(self.w.conn.prepare_cached(*LOCK_BREAKER)?.query_row(params![key], |r| row::breaker(r)).optional()?)
    }

    async fn save_breaker(&mut self, b: &BreakerRecord) -> Result<(), StoreError> {
        let (state, data, settings) = row::breaker_texts(b);
        self.w.conn.prepare_cached(*SAVE_BREAKER)?.execute(params![
            b.key,
            state,
            data,
            settings,
            b.changed_at,
            b.updated_at
        ])?;
        Ok(())
    }

    async fn let_go(&mut self, key: &str) -> Result<Vec<String>, StoreError> {
        let now = self.w.now;
        Ok(self
            .w
            .conn
            .prepare_cached(*LET_GO)?
            .query_map(params![key, now], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }
}
