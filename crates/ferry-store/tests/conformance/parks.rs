//! Pins, on PostgreSQL, the parks a worker process keeps in the database
//! (`postgres/parks.rs`): a submission on another node leases its new job to the parked
//! worker in its own transaction, and the worker's withdrawal reads what it was leased; a park nobody took is withdrawn empty; several parks share a
//! batch and leave what is more than their slots queued; a submission of the worker's own
//! process hands its job over in memory; no row is left behind.

use super::*;
use ferry_store::Parked;
use std::time::{Duration, Instant};

/// The parks waiting in the schema's table.
async fn waiting(pool: &sqlx::PgPool, schema: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {schema}.claim_parks WHERE slots > 0");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("count parks")
}

async fn waiting_slots(pool: &sqlx::PgPool, schema: &str) -> i64 {
    let sql = format!("SELECT COALESCE(SUM(slots), 0)::bigint FROM {schema}.claim_parks");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("sum slots")
}

async fn rows(pool: &sqlx::PgPool, schema: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {schema}.claim_parks");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("count parks")
}

/// Waits until `n` parks are written (a park's row is written beside the dispatcher).
async fn parked(pool: &sqlx::PgPool, schema: &str, n: i64) {
    let started = Instant::now();
    while waiting(pool, schema).await < n {
        assert!(started.elapsed() < Duration::from_secs(30), "the parks were not written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn park(store: &PgStore, worker: &str, slots: usize) -> Parked {
    store.park(claim_req(worker, slots)).expect("a worker process parks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_worker_process_park_is_taken_by_a_submission_on_any_node() {
    let Some(api) = postgres().await else { return };
    let schema = api.schema.clone().expect("a schema");
    let opts = PgOptions {
        url: pg_url(),
        schema: Some(schema.clone()),
        max_connections: 4,
        application_name: "worker-process".into(),
        shared_parks: true,
    };
    let worker = PgStore::open(&opts).await.expect("the worker process's store");
    let pool = sqlx::PgPool::connect(&pg_url()).await.expect("a pool");

    // Taken by another node's submission: leased there, read back by the withdrawal.
    let p = park(&worker, "w1", 3);
    parked(&pool, &schema, 1).await;
    let spec = job(None, 0);
    api.store.submit(vec![spec.clone()]).await.unwrap();
    // The withdrawal only reads: the submission leased the job.
    let got = p.withdraw().await.expect("the park was taken").jobs;
    assert_eq!(
        got.iter().map(|j| (j.id, j.attempt, j.worker.as_deref())).collect::<Vec<_>>(),
        [(spec.id, 1, Some("w1"))]
    );
    assert!(got[0].started_at > 0);
    assert_eq!(rows(&pool, &schema).await, 0, "a withdrawn park leaves no row");

    // Nobody takes it: withdrawn empty.
    let p = park(&worker, "w1", 3);
    parked(&pool, &schema, 1).await;
    assert!(p.withdraw().await.is_none());
    assert_eq!(rows(&pool, &schema).await, 0);

    // Two parks of one slot each and three jobs: one each, the third waits.
    let (p1, p2) = (park(&worker, "w1", 1), park(&worker, "w2", 1));
    parked(&pool, &schema, 2).await;
    let batch: Vec<NewJob> = (0..3).map(|_| job(None, 0)).collect();
    api.store.submit(batch).await.unwrap();
    let (a, b) = (p1.withdraw().await.expect("taken").jobs, p2.withdraw().await.expect("taken").jobs);
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!((a[0].worker.as_deref(), b[0].worker.as_deref()), (Some("w1"), Some("w2")));
    assert_ne!(a[0].id, b[0].id);
    let rest = api.store.claim(claim_req("w3", 10)).await.unwrap().jobs;
    assert_eq!(rest.len(), 1, "the third job waited in the queue");

    // A park takes from submissions until its slots are used up, on any node, the worker
    // process's own included; then its queue's jobs wait.
    let p = park(&worker, "w1", 2);
    parked(&pool, &schema, 1).await;
    let (own, other, third) = (job(None, 0), job(None, 0), job(None, 0));
    worker.submit(vec![own.clone()]).await.unwrap();
    api.store.submit(vec![other.clone()]).await.unwrap();
    assert_eq!(waiting_slots(&pool, &schema).await, 0, "both slots were taken");
    api.store.submit(vec![third.clone()]).await.unwrap();
    let mut got: Vec<JobId> = p.withdraw().await.expect("taken").jobs.iter().map(|j| j.id).collect();
    got.sort();
    let mut want = vec![own.id, other.id];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(rows(&pool, &schema).await, 0);
    let rest = api.store.claim(claim_req("w3", 10)).await.unwrap().jobs;
    assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), [third.id], "the third waited in the queue");

    worker.close().await;
    pool.close().await;
    api.cleanup().await;
}
