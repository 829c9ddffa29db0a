//! Opening the database: read connections, the WAL checkpoint, migrations.

use super::*;

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
