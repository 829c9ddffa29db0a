//! Circuit breakers on PostgreSQL: the breaker rules' statements ([`BreakerTx`]) on a
//! pool transaction, and the reads.

use super::tx::PgTx;
use super::*;
use crate::rules::{self, breakers::BreakerTx};
use crate::{BreakerOp, BreakerOutcome, BreakerRecord};
use ferry_core::breaker::Breaker;

crate::sql::statements!("../../sql/postgres/breakers.sql": MAKE_BREAKER, LOCK_BREAKER, SAVE_BREAKER, LET_GO, BREAKERS);

impl PgStore {
    pub(super) async fn apply_breaker(&self, key: &str, op: BreakerOp) -> Result<BreakerOutcome, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let out = rules::breakers::apply(&mut tx, key, op).await?;
        // Jobs a close let go are queued (not due later): the commit wakes their queues.
        tx.commit().await?;
        Ok(out)
    }

    pub(super) async fn read_breakers(&self, key: Option<&str>) -> Result<Vec<BreakerRecord>, StoreError> {
        let rows = sqlx::query(*BREAKERS).bind(key).fetch_all(&self.pool).await?;
        rows.iter().map(row::breaker).collect::<Result<_, sqlx::Error>>().map_err(err)
    }
}

#[async_trait]
impl BreakerTx for PgTx<'_> {
    async fn lock_breaker(&mut self, key: &str) -> Result<Option<BreakerRecord>, StoreError> {
        let new = Breaker { window_start: self.now, ..Breaker::default() };
        let data = serde_json::to_string(&new).unwrap_or_default();
        sqlx::query(*MAKE_BREAKER).bind(key).bind(data).bind(self.now).execute(&mut *self.tx).await?;
        let found = sqlx::query(*LOCK_BREAKER).bind(key).fetch_optional(&mut *self.tx).await?;
        // Read the clock once the row is locked: after whatever changed it last.
        self.now = clock(&mut self.tx).await?;
        found.as_ref().map(row::breaker).transpose().map_err(err)
    }

    async fn save_breaker(&mut self, b: &BreakerRecord) -> Result<(), StoreError> {
        let (state, data, settings) = row::breaker_texts(b);
        sqlx::query(*SAVE_BREAKER)
            .bind(&b.key)
            .bind(state)
            .bind(data)
            .bind(settings)
            .bind(b.changed_at)
            .bind(b.updated_at)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn let_go(&mut self, key: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(*LET_GO).bind(key).bind(self.now).fetch_all(&mut *self.tx).await?)
    }
}
