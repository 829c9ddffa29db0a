//! Blobs on PostgreSQL: the `blobs` table, which every node reaches (see
//! `crate::blobs` for the rule). Each operation is a transaction whose statements the
//! database ends at the operation's bound (`statement_timeout`), so an operation that a
//! lock or a slow disk holds up gives up in the database too, not only in this process.

use super::err;
use crate::StoreError;
use crate::blobs::{BlobBackend, BlobError, Media, TOUCH_AFTER};
use async_trait::async_trait;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};
use std::time::{Duration, Instant};

crate::sql::statements!("../../sql/postgres/blobs.sql": BOUND, TOUCH_BLOB, INSERT_BLOB, READ_BLOB, DELETE_BLOB, PRUNE_BLOBS);

/// The blob table of one database.
pub(crate) struct PgBlobs {
    pub(crate) pool: PgPool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A database error as a blob error: a statement ended by its bound (SQLSTATE 57014,
/// `query_canceled`) is a timeout, not an unreachable database.
fn blob_err(e: sqlx::Error, wait: Duration) -> BlobError {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("57014")
    {
        return BlobError::TimedOut(ms(wait));
    }
    BlobError::Store(err(e))
}

impl PgBlobs {
    /// A transaction whose statements end at `until`.
    async fn begin(&self, until: Instant) -> Result<(Transaction<'static, Postgres>, Duration), BlobError> {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(BlobError::TimedOut(0));
        }
        let mut tx = self.pool.begin().await.map_err(|e| blob_err(e, wait))?;
        // `statement_timeout` takes milliseconds; 0 would mean no bound at all.
        let bound = ms(wait).max(1).to_string();
        sqlx::query(*BOUND).bind(bound).execute(&mut *tx).await.map_err(|e| blob_err(e, wait))?;
        Ok((tx, wait))
    }
}

#[async_trait]
impl BlobBackend for PgBlobs {
    async fn put(
        &self,
        workspace: &str,
        hash: &str,
        media: Media,
        data: Vec<u8>,
        until: Instant,
    ) -> Result<(), BlobError> {
        let (mut tx, wait) = self.begin(until).await?;
        let e = |e| blob_err(e, wait);
        // Bytes already stored are not sent again.
        let touched = sqlx::query(*TOUCH_BLOB).bind(workspace).bind(hash).execute(&mut *tx).await.map_err(e)?;
        if touched.rows_affected() == 0 {
            sqlx::query(*INSERT_BLOB)
                .bind(workspace)
                .bind(hash)
                .bind(media.as_str())
                .bind(data.len() as i64)
                .bind(data)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    async fn get(&self, workspace: &str, hash: &str, until: Instant) -> Result<Option<(Media, Vec<u8>)>, BlobError> {
        let (mut tx, wait) = self.begin(until).await?;
        let e = |e| blob_err(e, wait);
        let touch_after = ms(TOUCH_AFTER) as i64 * 1000;
        let row = sqlx::query(*READ_BLOB)
            .bind(workspace)
            .bind(hash)
            .bind(touch_after)
            .fetch_optional(&mut *tx)
            .await
            .map_err(e)?;
        let Some(row) = row else { return Ok(None) };
        let media: String = row.try_get(0).map_err(e)?;
        let data: Vec<u8> = row.try_get(1).map_err(e)?;
        let stale: bool = row.try_get(2).map_err(e)?;
        if stale {
            sqlx::query(*TOUCH_BLOB).bind(workspace).bind(hash).execute(&mut *tx).await.map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        let media = Media::parse(&media).ok_or_else(|| {
            BlobError::Store(StoreError::Database(format!("blob {hash} has an unknown media `{media}`")))
        })?;
        Ok(Some((media, data)))
    }

    async fn delete(&self, workspace: &str, hash: &str, until: Instant) -> Result<bool, BlobError> {
        let (mut tx, wait) = self.begin(until).await?;
        let e = |e| blob_err(e, wait);
        let gone = sqlx::query(*DELETE_BLOB).bind(workspace).bind(hash).execute(&mut *tx).await.map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(gone.rows_affected() > 0)
    }

    async fn prune(&self, unused_for_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let micros = i64::try_from(unused_for_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
        let gone = sqlx::query(*PRUNE_BLOBS).bind(micros).bind(limit as i64).execute(&self.pool).await.map_err(err)?;
        Ok(gone.rows_affected() as usize)
    }
}
