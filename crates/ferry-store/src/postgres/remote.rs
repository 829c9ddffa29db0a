//! Remote kinds and remote attempts' events on PostgreSQL (see [`crate::remote`]).

use super::*;
use crate::{RemoteKind, RemoteStore};

crate::sql::statements!("../../sql/postgres/remote.sql": PUT_REMOTE_KIND, REMOTE_KINDS, JOB_EVENTS);

#[async_trait]
impl RemoteStore for PgStore {
    async fn put_remote_kinds(&self, kinds: &[RemoteKind]) -> Result<(), StoreError> {
        let (mut tx, now) = self.begin().await?;
        for k in kinds {
            sqlx::query(*PUT_REMOTE_KIND).bind(&k.kind).bind(&k.queue).bind(now).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remote_kinds(&self) -> Result<Vec<RemoteKind>, StoreError> {
        let rows = sqlx::query(*REMOTE_KINDS).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(RemoteKind { kind: r.try_get(0)?, queue: r.try_get(1)? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    /// Writes the events while the job runs under `attempt` (one statement that locks the
    /// job's row first); whether it did.
    async fn write_job_events(
        &self,
        id: JobId,
        attempt: u32,
        events: Vec<(String, serde_json::Value)>,
    ) -> Result<bool, StoreError> {
        let (types, data): (Vec<String>, Vec<String>) = events.into_iter().map(|(t, d)| (t, d.to_string())).unzip();
        let written = sqlx::query(*JOB_EVENTS)
            .bind(id)
            .bind(attempt as i32)
            .bind(types)
            .bind(data)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if written > 0 {
            self.committed([Subject::Job(id)]);
        }
        Ok(written > 0)
    }
}
