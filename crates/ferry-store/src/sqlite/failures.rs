//! The failed attempts' read on SQLite (see `crate::failures`), on a read connection.

use super::*;
use crate::{FailureFilter, FailureRow};

crate::sql::statements!("../../sql/sqlite/failures.sql": FAILURES);

impl SqliteStore {
    pub(super) async fn read_failures(&self, workspace: &str, f: FailureFilter) -> Result<Vec<FailureRow>, StoreError> {
        let ws = workspace.to_string();
        let cap = i64::try_from(f.cap).unwrap_or(i64::MAX);
        self.read(move |c| {
            c.prepare_cached(*FAILURES)?
                .query_map(params![ws, f.since, f.queue, f.kind, f.target, cap], |r| crate::failures::row(r))?
                .collect()
        })
        .await
    }
}
