//! The server a benchmark measures: the flags that say where its store is and how wide
//! its queue, and its configuration on a fresh temporary store, removed afterwards.

use crate::config::{Config, QueueSettings};
use clap::Args;
use tempfile::TempDir;

/// The flags of the server under test (`queue` and `workflow`).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Worker concurrency of the queue (per process)
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Benchmark PostgreSQL at this URL (in a temporary schema) instead of SQLite
    #[arg(long = "database")]
    pub database_url: Option<String>,
}

/// A server configuration on a fresh store: a temporary data directory for SQLite, or a
/// temporary schema of `--database`. Its `default` queue has `--concurrency` slots and no
/// depth cap; it listens on a loopback port of the system's choosing.
pub struct Target {
    pub cfg: Config,
    /// The PostgreSQL schema (`b_` and hex digits), when on PostgreSQL.
    pub schema: Option<String>,
    /// Holds the data directory (and anything else a benchmark puts beside it).
    dir: TempDir,
}

impl Target {
    pub fn new(args: &TargetArgs) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        let mut cfg =
            Config { listen: "127.0.0.1:0".parse()?, data_dir: dir.path().join("engine"), ..Config::default() };
        let mut schema = None;
        if let Some(url) = &args.database_url {
            let name = format!("b_{:016x}", fastrand::u64(..));
            cfg.database_url = Some(url.clone());
            cfg.database_schema = Some(name.clone());
            schema = Some(name);
        }
        cfg.queues.insert(
            "default".into(),
            QueueSettings { concurrency: Some(args.concurrency), max_depth: Some(0), severity: None },
        );
        Ok(Target { cfg, schema, dir })
    }

    /// `postgres` or `sqlite`, for the report.
    pub fn backend(&self) -> &'static str {
        if self.cfg.database_url.is_some() { "postgres" } else { "sqlite" }
    }

    /// Removes the store: drops the PostgreSQL schema (best effort) and deletes the
    /// temporary directory.
    pub async fn remove(self) {
        if let (Some(url), Some(schema)) = (&self.cfg.database_url, &self.schema)
            && let Ok(pool) = sqlx::PgPool::connect(url).await
        {
            // The schema name was generated above: `b_` and hex digits.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                .execute(&pool)
                .await;
            pool.close().await;
        }
        drop(self.dir);
    }
}
