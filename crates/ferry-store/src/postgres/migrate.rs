//! Migrations (under an advisory lock) and the warm-up of new pool connections.

use super::*;

crate::sql::statements!("../../sql/postgres/migrate.sql":
    LOCK_MIGRATIONS, CREATE_MIGRATIONS_TABLE, SCHEMA_VERSION, RECORD_MIGRATION, UNLOCK_MIGRATIONS,
);

pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query(*LOCK_MIGRATIONS).execute(&mut *conn).await?;
    let result = async {
        sqlx::query(*CREATE_MIGRATIONS_TABLE).execute(&mut *conn).await?;
        let current: Option<i64> = sqlx::query_scalar(*SCHEMA_VERSION).fetch_one(&mut *conn).await?;
        let current = current.unwrap_or(0);
        let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > latest {
            return Err(StoreError::Database(format!(
                "the database is at schema version {current}, newer than this Ferry knows ({latest})"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Database(format!("migration {version} failed: {e}")))?;
            sqlx::query(*RECORD_MIGRATION).bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
            tracing::info!(version, "applied PostgreSQL migration");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query(*UNLOCK_MIGRATIONS).execute(&mut *conn).await;
    result
}

/// How many times [`warm`] runs each statement: PostgreSQL plans a prepared statement
/// afresh for each of its first five executions on a connection, and only then settles
/// on a plan.
pub(super) const WARM_RUNS: usize = 6;

/// Runs a pickup's statements ([`WARM_RUNS`] times) on a new connection, in a transaction
/// that is rolled back and would change nothing anyway (a submission of no jobs, a claim
/// of none). The first requests to get the connection then find the statements prepared
/// and past their first plans, instead of paying for that in their latency: on a fresh
/// server, most of the slowest 1% of pickups were among its first hundred
/// (`BENCHMARKS.md`). The pool calls it for every connection it opens, which it does only
/// once the migrations are done (the statements need the schema), and ignores a failure;
/// public for its test.
pub async fn warm(conn: &mut sqlx::PgConnection, channel: &str) -> Result<(), StoreError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let none = ClaimRequest { queue: String::new(), limit: 0, worker: String::new(), lease_ms: 0 };
    for _ in 0..WARM_RUNS {
        insert_query(SUBMIT.as_str(), None, &[], &[])
            .bind(channel)
            .bind(Vec::<String>::new())
            .bind("")
            .fetch_all(&mut *tx)
            .await?;
        claim_plain(&mut *tx, &none, None, false).await?;
        claim_plain(&mut *tx, &none, None, true).await?;
    }
    tx.rollback().await?;
    Ok(())
}
