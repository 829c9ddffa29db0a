//! Run-time settings on PostgreSQL: workspace limits, queue settings and shares, label
//! rates, tokens and the closed-store flag.

use super::*;

crate::sql::statements!("../../sql/postgres/settings.sql":
    SET_WORKSPACE_LIMITS, QUEUE_SETTINGS, SET_QUEUE_SETTINGS, QUEUE_SHARES, SET_QUEUE_SHARE, LABEL_RATES,
    DELETE_LABEL_RATE, INSERT_LABEL_RATE, INSERT_TOKEN, CLOSE_AUTH, TOKENS_CHANGED, TOKENS, REVOKE_TOKEN, TOKEN_BY_HASH,
    ACTIVE_TOKENS, AUTH_CLOSED, LOCK_AUTH_STATE, REOPEN,
);

impl PgStore {
    pub(super) async fn workspace_limits(&self, workspace: &str) -> Result<Option<WorkspaceLimits>, StoreError> {
        let text: Option<String> =
            sqlx::query_scalar(*WORKSPACE_LIMITS).bind(workspace).fetch_optional(&self.pool).await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Database(e.to_string()))).transpose()
    }

    pub(super) async fn set_workspace_limits(
        &self,
        workspace: &str,
        limits: WorkspaceLimits,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(&limits).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(*SET_WORKSPACE_LIMITS).bind(workspace).bind(text).execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn queue_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let rows = sqlx::query(*QUEUE_SETTINGS).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(QueueSettings {
                    name: r.try_get(0)?,
                    concurrency: r.try_get::<Option<i64>, _>(1)?.map(|c| c.clamp(0, u32::MAX as i64) as u32),
                    max_depth: r.try_get::<Option<i64>, _>(2)?.map(|d| d.max(0) as u64),
                    rate: r.try_get(3)?,
                    paused: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    pub(super) async fn set_queue_settings(&self, q: QueueSettings) -> Result<(), StoreError> {
        sqlx::query(*SET_QUEUE_SETTINGS)
            .bind(&q.name)
            .bind(q.concurrency.map(i64::from))
            .bind(q.max_depth.map(|d| d as i64))
            .bind(q.rate)
            .bind(q.paused)
            .execute(&self.pool)
            .await?;
        self.rates.forget();
        Ok(())
    }

    pub(super) async fn queue_shares(&self, workspace: &str) -> Result<Vec<QueueShare>, StoreError> {
        let rows = sqlx::query(*QUEUE_SHARES).bind(workspace).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(QueueShare {
                    queue: r.try_get(0)?,
                    workspace: r.try_get(1)?,
                    paused: r.try_get(2)?,
                    rate: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    pub(super) async fn set_queue_share(&self, share: QueueShare) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(*SET_QUEUE_SHARE)
            .bind(&share.queue)
            .bind(&share.workspace)
            .bind(share.paused)
            .bind(share.rate)
            .execute(&mut *tx)
            .await?;
        let woken: BTreeSet<String> = if share.paused { BTreeSet::new() } else { [share.queue.clone()].into() };
        // Resumed jobs are ready work: every node's dispatchers look again.
        self.notify(&mut tx, &woken).await?;
        tx.commit().await?;
        self.rates.forget();
        self.wake_locally(&woken);
        Ok(())
    }

    pub(super) async fn label_rates(&self, workspace: &str) -> Result<Vec<LabelRate>, StoreError> {
        let rows = sqlx::query(*LABEL_RATES).bind(workspace).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(LabelRate { label: r.try_get(0)?, rate: r.try_get(1)? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    pub(super) async fn set_label_rate(
        &self,
        workspace: &str,
        label: &str,
        rate: Option<f64>,
    ) -> Result<bool, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let existed =
            sqlx::query(*DELETE_LABEL_RATE).bind(workspace).bind(label).execute(&mut *tx).await?.rows_affected() > 0;
        if let Some(rate) = rate {
            sqlx::query(*INSERT_LABEL_RATE).bind(workspace).bind(label).bind(rate).bind(now).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.rates.forget();
        Ok(existed)
    }

    pub(super) async fn create_token(&self, token: NewToken) -> Result<TokenRecord, StoreError> {
        let (mut tx, now) = self.begin().await?;
        sqlx::query(*INSERT_TOKEN)
            .bind(token.id)
            .bind(&token.workspace)
            .bind(&token.user)
            .bind(token.role.as_str())
            .bind(&token.hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // From the first token on, the store stays closed (see `Store::auth_closed`). Always
        // written, so that the row lock orders this against a concurrent `reopen`.
        sqlx::query(*CLOSE_AUTH).execute(&mut *tx).await?;
        sqlx::query(*TOKENS_CHANGED).bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id: token.id,
            workspace: token.workspace,
            user: token.user,
            role: token.role,
            created_at: now,
            revoked_at: None,
        })
    }

    pub(super) async fn tokens(&self, workspace: &str) -> Result<Vec<TokenRecord>, StoreError> {
        // The column list is put in here: both backends read tokens with `TOKEN_COLUMNS`.
        let sql = TOKENS.replace("{TOKEN_COLUMNS}", TOKEN_COLUMNS);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(workspace).fetch_all(&self.pool).await?;
        rows.iter().map(crate::tokens::token_row).collect::<Result<_, sqlx::Error>>().map_err(err)
    }

    pub(super) async fn revoke_token(&self, workspace: &str, id: uuid::Uuid) -> Result<bool, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let n = sqlx::query(*REVOKE_TOKEN).bind(id).bind(workspace).bind(now).execute(&mut *tx).await?.rows_affected();
        // Every node drops its cached view of the token when this commits.
        sqlx::query(*TOKENS_CHANGED).bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    pub(super) async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        // The column list is put in here, as in `tokens`.
        let sql = TOKEN_BY_HASH.replace("{TOKEN_COLUMNS}", TOKEN_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(hash).fetch_optional(&self.pool).await?;
        row.as_ref().map(crate::tokens::token_row).transpose().map_err(err)
    }

    pub(super) async fn active_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(*ACTIVE_TOKENS).fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn auth_closed(&self) -> Result<bool, StoreError> {
        // The flag, or any unrevoked token: either keeps the store closed.
        Ok(sqlx::query_scalar(*AUTH_CLOSED).fetch_one(&self.pool).await?)
    }

    pub(super) async fn reopen(&self) -> Result<ReopenOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock orders this against a token's creation, which writes the row too:
        // a token committed before it is counted below, one after it closes the store again.
        let closed: bool = sqlx::query_scalar(*LOCK_AUTH_STATE).fetch_one(&mut *tx).await?;
        let active: i64 = sqlx::query_scalar(*ACTIVE_TOKENS).fetch_one(&mut *tx).await?;
        if active > 0 {
            tx.rollback().await?;
            return Ok(ReopenOutcome::TokensRemain(active as u64));
        }
        if !closed {
            tx.rollback().await?;
            return Ok(ReopenOutcome::AlreadyOpen);
        }
        sqlx::query(*REOPEN).execute(&mut *tx).await?;
        // Every node drops its cached view of the flag when this commits.
        sqlx::query(*TOKENS_CHANGED).bind(&self.token_channel).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(ReopenOutcome::Reopened)
    }
}
