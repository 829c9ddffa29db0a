//! Pins what is SQLite's own: the claim, promotion, reaper, count and admission queries stay on
//! their indexes. The behaviour both backends share is pinned by
//! `tests/conformance.rs`.

use super::*;

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&SqliteOptions { data_dir: dir.to_path_buf(), durability: Durability::Process }).unwrap()
}

fn plan(conn: &Connection, sql: &str, n: usize) -> String {
    let sql = format!("EXPLAIN QUERY PLAN {sql}");
    let mut stmt = conn.prepare(&sql).unwrap();
    let params: Vec<rusqlite::types::Value> = (0..n).map(|_| rusqlite::types::Value::Integer(1)).collect();
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| r.get::<_, String>(3)).unwrap();
    rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
}

#[test]
fn claim_and_count_queries_use_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let conn = Connection::open(store.path()).unwrap();
    let claim = plan(&conn, CLAIM, 5);
    assert!(claim.contains("jobs_ready"), "claim plan: {claim}");
    assert!(!claim.contains("SCAN jobs\n") && !claim.ends_with("SCAN jobs"), "claim plan scans the table: {claim}");
    // The pauses' subqueries leave the claim in index order: no sort of the backlog.
    assert!(!claim.contains("TEMP B-TREE FOR ORDER BY"), "claim plan sorts: {claim}");
    let promote = plan(&conn, PROMOTE_DUE, 2);
    assert!(promote.contains("jobs_due"), "promote plan: {promote}");
    let expired = plan(&conn, &EXPIRED.replace("{CLAIMED_COLUMNS}", CLAIMED_COLUMNS), 2);
    assert!(expired.contains("jobs_lease"), "reaper plan: {expired}");
    let stats = plan(&conn, QUEUE_STATS, 0);
    for index in ["jobs_ready", "jobs_lease", "jobs_due", "jobs_dead"] {
        assert!(stats.contains(index), "stats plan does not use {index}: {stats}");
    }
    assert!(!stats.lines().any(|l| l.trim() == "SCAN jobs"), "stats plan scans the table: {stats}");
    // Its condition is written as jobs_inflight's is (migration 0020), or the index is not used.
    let in_flight = plan(&conn, *admission::JOBS_IN_FLIGHT, 2);
    assert!(in_flight.contains("jobs_inflight"), "in-flight count plan: {in_flight}");
}

#[tokio::test]
async fn a_closed_store_lets_its_directory_go_while_something_still_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let opts = SqliteOptions { data_dir: dir.path().to_path_buf(), durability: Durability::Process };
    assert!(matches!(SqliteStore::open(&opts), Err(StoreError::Locked(_))), "one store a directory");
    first.close().await;
    // `first` is still alive, as a task that has yet to notice a stop would keep it.
    let second = SqliteStore::open(&opts).expect("the directory is free once the first store closed");
    assert!(matches!(SqliteStore::open(&opts), Err(StoreError::Locked(_))), "the second store holds it");
    second.close().await;
    drop(first);
}
