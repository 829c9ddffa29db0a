//! Opening the database: read connections, the WAL checkpoint, migrations.

use super::*;

/// The schema's migrations, in order; each runs once, in a transaction of its own.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../sql/sqlite/migrations/0001_jobs.sql")),
    (2, include_str!("../../sql/sqlite/migrations/0002_workers.sql")),
    (3, include_str!("../../sql/sqlite/migrations/0003_exec.sql")),
    (4, include_str!("../../sql/sqlite/migrations/0004_workflows.sql")),
    (5, include_str!("../../sql/sqlite/migrations/0005_tokens.sql")),
    (6, include_str!("../../sql/sqlite/migrations/0006_admission.sql")),
    (7, include_str!("../../sql/sqlite/migrations/0007_queue_settings.sql")),
    (8, include_str!("../../sql/sqlite/migrations/0008_rates.sql")),
    (9, include_str!("../../sql/sqlite/migrations/0009_tenancy.sql")),
    (10, include_str!("../../sql/sqlite/migrations/0010_share_rate.sql")),
    (11, include_str!("../../sql/sqlite/migrations/0011_breakers.sql")),
    (12, include_str!("../../sql/sqlite/migrations/0012_failures.sql")),
    // 13 is PostgreSQL's blobs table: SQLite keeps blobs as files (`sqlite/blobs.rs`).
    (14, include_str!("../../sql/sqlite/migrations/0014_escalations.sql")),
    (15, include_str!("../../sql/sqlite/migrations/0015_ordering.sql")),
    (16, include_str!("../../sql/sqlite/migrations/0016_agents.sql")),
    (17, include_str!("../../sql/sqlite/migrations/0017_run_depth.sql")),
    (18, include_str!("../../sql/sqlite/migrations/0018_remote_kinds.sql")),
    (19, include_str!("../../sql/sqlite/migrations/0019_schedules.sql")),
    (20, include_str!("../../sql/sqlite/migrations/0020_inflight_without_list.sql")),
];

crate::sql::statements!("../../sql/sqlite/open.sql":
    READER_PRAGMAS, CHECKPOINT_PASSIVE, SCHEMA_VERSION, APPLY_MIGRATION,
);

pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A small cache: whenever the writer has committed since a reader's last read, SQLite
    // drops the reader's whole cache, and dropping a large one costs more than re-reading.
    conn.execute_batch(*READER_PRAGMAS)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Folds the WAL back into the database file every [`CHECKPOINT_EVERY`], without waiting
/// for readers or the writer (a passive checkpoint), until the store's writer has stopped.
pub(super) fn checkpoint(path: &Path, writer: &mpsc::WeakSender<Cmd>) {
    let conn =
        match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no checkpoint connection; the writer checkpoints by itself");
                return;
            }
        };
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if writer.upgrade().is_none_or(|tx| tx.is_closed()) {
            return;
        }
        if let Err(e) = conn.query_row(*CHECKPOINT_PASSIVE, [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row(*SCHEMA_VERSION, [], |r| r.get(0)).map_err(db)?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(StoreError::Database(format!(
            "the database is at schema version {current}, newer than this Ferry knows ({latest})"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        // Put in here: a PRAGMA takes no parameters. The version first, so that nothing in
        // the migration's own text is replaced.
        let script = APPLY_MIGRATION.replace("{version}", &version.to_string()).replace("{migration}", sql);
        if let Err(e) = conn.execute_batch(&script) {
            let _ = conn.execute_batch(*ROLLBACK);
            return Err(StoreError::Database(format!("migration {version} failed: {e}")));
        }
        tracing::info!(version, "applied SQLite migration");
    }
    Ok(())
}

/// Read connections, each used for one read transaction at a time and kept for the next.
pub(super) struct ReadPool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path).map_err(db)?,
        };
        // Every read runs in one read transaction, so a job and its events come from the
        // same snapshot even when the writer commits in between.
        let result =
            conn.prepare_cached(*BEGIN_READ).and_then(|mut s| s.execute([])).and_then(|_| f(&conn)).map_err(db);
        if conn.prepare_cached(*COMMIT).and_then(|mut s| s.execute([])).is_err() {
            let _ = conn.execute_batch(*ROLLBACK);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}
