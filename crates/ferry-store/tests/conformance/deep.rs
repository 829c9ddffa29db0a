//! Pins, on both backends, that claims of a deep queue keep claim order and lose nothing
//! however they find the queue's first jobs (on PostgreSQL, full claims leave a head that
//! the next claims start from, `postgres/head.rs`): a job that comes before what was
//! claimed (a higher priority) is claimed next; a queue whose jobs at the
//! head's priority ran out still answers with its lower-priority jobs; and every job is
//! claimed exactly once. On PostgreSQL the same holds for a job submitted through another
//! store (another node) once its wake-up has arrived.

use super::*;

conformance!(deep_claims_keep_claim_order_and_lose_nothing,);

fn ids(jobs: &[ferry_store::ClaimedJob]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

async fn deep_claims_keep_claim_order_and_lose_nothing(store: Arc<dyn Store>) {
    let low = job(None, -1);
    let batch: Vec<NewJob> = (0..30).map(|_| job(None, 0)).collect();
    let mut order: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    // One submission: one due time, so the order is the ids'.
    order.sort();
    store.submit(std::iter::once(low.clone()).chain(batch).collect()).await.unwrap();

    // Full claims, one after the other, take the queue in order.
    let first = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    let second = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(ids(&first), order[..10]);
    assert_eq!(ids(&second), order[10..20]);

    // A higher priority submitted now comes first.
    let urgent = job(None, 5);
    store.submit(vec![urgent.clone()]).await.unwrap();
    assert_eq!(ids(&store.claim(claim_req("w", 1)).await.unwrap().jobs), vec![urgent.id]);
    assert_eq!(ids(&store.claim(claim_req("w", 3)).await.unwrap().jobs), order[20..23]);

    // A job handed back is ready again now, after what waits at its priority. The
    // priority's jobs run out within the next claim: it goes on to the lower priority.
    let back = &first[0];
    assert!(store.finish(end(back.id, back.attempt, FinishResult::Released)).await.unwrap());
    let rest = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    let mut want = order[23..].to_vec();
    want.extend([back.id, low.id]);
    assert_eq!(ids(&rest), want);
    assert!(store.claim(claim_req("w", 10)).await.unwrap().jobs.is_empty(), "every job was claimed once");
}

/// Another node's submission reaches this store's claims through its wake-up, which
/// carries where the new jobs stand in claim order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_submitted_on_another_node_before_the_head_is_claimed_next() {
    let Some(b) = postgres().await else { return };
    let other = PgStore::open(&PgOptions {
        url: pg_url(),
        schema: b.schema.clone(),
        max_connections: 2,
        application_name: "ferry-test:other-node".into(),
    })
    .await
    .unwrap();
    let batch: Vec<NewJob> = (0..30).map(|_| job(None, 0)).collect();
    let mut order: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    order.sort();
    b.store.submit(batch).await.unwrap();
    assert_eq!(ids(&b.store.claim(claim_req("w", 10)).await.unwrap().jobs), order[..10]);
    assert_eq!(ids(&b.store.claim(claim_req("w", 10)).await.unwrap().jobs), order[10..20]);

    // Submitted elsewhere: a higher priority, then (a barrier: wake-ups arrive in commit
    // order) a job of another queue, whose wake-up this store's dispatchers would get.
    let urgent = job(None, 5);
    other.submit(vec![urgent.clone()]).await.unwrap();
    let barrier = spec(JobSpec { queue: Some("barrier".into()), ..noop() });
    let woken = b.store.wakeup("barrier");
    other.submit(vec![barrier]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), woken.notified())
        .await
        .expect("the other node's wake-ups arrive");
    assert_eq!(ids(&b.store.claim(claim_req("w", 1)).await.unwrap().jobs), vec![urgent.id]);
    assert_eq!(ids(&b.store.claim(claim_req("w", 20)).await.unwrap().jobs), order[20..]);
    other.close().await;
    b.cleanup().await;
}
