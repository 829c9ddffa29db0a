-- Opening SQLite (sqlite/open.rs): read connections, the WAL checkpoint, migrations.
-- `{version}` and `{migration}` mark what Rust puts in APPLY_MIGRATION.

-- name: READER_PRAGMAS
-- A read connection: no writes, and a small cache (512 KiB), which SQLite drops whenever the writer committed since the last read, so a larger one kept little but memory: with up to 8 idle readers each filling 2 MiB on a deep queue's counts, the server's peak grew with the queue's depth (peak 40 MiB draining a million waiting, 36 MiB with 512 KiB; no throughput change measured).
PRAGMA query_only = 1; PRAGMA cache_size = -512;

-- name: CHECKPOINT_PASSIVE
-- Folds the WAL into the database file without waiting for readers or the writer.
PRAGMA wal_checkpoint(PASSIVE)

-- name: SCHEMA_VERSION
-- The last migration applied (0 when none), kept in user_version where PostgreSQL has a ferry_migrations table.
PRAGMA user_version

-- name: APPLY_MIGRATION
-- One migration and its version, in one transaction; PostgreSQL records it in ferry_migrations (RECORD_MIGRATION).
BEGIN IMMEDIATE;
{migration}
PRAGMA user_version = {version};
COMMIT;
