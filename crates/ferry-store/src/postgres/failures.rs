//! The failed attempts' read on PostgreSQL (see `crate::failures`), on the pool.

use super::*;
use crate::{FailureFilter, FailureRow};

crate::sql::statements!("../../sql/postgres/failures.sql": FAILURES);

impl PgStore {
    pub(super) async fn read_failures(&self, workspace: &str, f: FailureFilter) -> Result<Vec<FailureRow>, StoreError> {
        let rows = sqlx::query(*FAILURES)
            .bind(workspace)
            .bind(f.since)
            .bind(f.queue)
            .bind(f.kind)
            .bind(f.target)
            .bind(i64::try_from(f.cap).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::failures::row).collect::<Result<_, sqlx::Error>>().map_err(err)
    }
}
