-- Migrations on PostgreSQL (postgres/migrate.rs), under an advisory lock so that nodes
-- starting together apply each once. The migrations themselves are under migrations/.

-- name: LOCK_MIGRATIONS
-- Takes the session lock on migrating this schema (SQLite's directory lock leaves one process to migrate).
SELECT pg_advisory_lock(hashtext('ferry-migrations:' || current_schema()))

-- name: CREATE_MIGRATIONS_TABLE
-- The applied migrations' versions; SQLite keeps its version in PRAGMA user_version instead.
CREATE TABLE IF NOT EXISTS ferry_migrations (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())

-- name: SCHEMA_VERSION
-- The last migration applied (NULL when none), from ferry_migrations where SQLite reads PRAGMA user_version.
SELECT max(version) FROM ferry_migrations

-- name: RECORD_MIGRATION
-- Records migration $1 as applied, in its transaction (SQLite sets user_version in APPLY_MIGRATION).
INSERT INTO ferry_migrations (version) VALUES ($1)

-- name: UNLOCK_MIGRATIONS
-- Releases LOCK_MIGRATIONS' lock.
SELECT pg_advisory_unlock(hashtext('ferry-migrations:' || current_schema()))
