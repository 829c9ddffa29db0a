//! Pins, on both backends, what a submission counts: a queue's depth cap and the
//! concurrency limits see only the jobs a batch really adds, so a client's retried request
//! (its idempotency keys already stored) and a key repeated inside one batch count once or
//! not at all, and are answered alike.

use super::*;
use ferry_store::{Admission, Submitted};

conformance!(a_depth_cap_counts_only_the_jobs_a_batch_adds, a_key_repeated_in_one_batch_counts_once,);

fn capped(depth: u64) -> Admission {
    Admission { queue_caps: vec![("default".into(), depth)], ..Admission::default() }
}

/// The same job as `j` (its key, its request) under a new id: what a retried request sends.
fn resent(j: &NewJob) -> NewJob {
    NewJob { id: JobId::now_v7(), ..j.clone() }
}

async fn a_depth_cap_counts_only_the_jobs_a_batch_adds(store: Arc<dyn Store>) {
    let (a, b) = (job(Some("a"), 0), job(Some("b"), 0));
    store.submit_admitted(vec![a.clone(), b.clone()], capped(2)).await.unwrap();
    // The queue is full. The same request again adds nothing, so it is answered, not refused.
    let again = store.submit_admitted(vec![resent(&a), resent(&b)], capped(2)).await;
    let again = again.expect("a retried batch adds no job: it cannot overfill the queue");
    let queued = |id| Submitted { id, state: JobState::Queued, created: false };
    assert_eq!(again, vec![queued(a.id), queued(b.id)]);
    // A new job does not fit; beside a retried one, only the new one counts.
    let c = job(Some("c"), 0);
    assert!(matches!(
        store.submit_admitted(vec![c.clone()], capped(2)).await,
        Err(StoreError::QueueFull { max_depth: 2, .. })
    ));
    let mixed = store.submit_admitted(vec![resent(&a), c.clone()], capped(3)).await.expect("one job added: 3 fit");
    assert_eq!(mixed, vec![queued(a.id), Submitted { id: c.id, state: JobState::Queued, created: true }]);
    assert_eq!(store.queue_stats().await.unwrap()[0].queued, 3);
    // Under the concurrency limits too: a retried batch is no new work.
    let limit = Admission { per_user: Some(3), ..Admission::default() };
    let retried = store.submit_admitted(vec![resent(&a), resent(&b), resent(&c)], limit.clone()).await;
    assert_eq!(retried.expect("nothing added: within the limit").len(), 3);
    assert!(matches!(store.submit_admitted(vec![job(None, 0)], limit).await, Err(StoreError::LimitReached(_))));
}

async fn a_key_repeated_in_one_batch_counts_once(store: Arc<dyn Store>) {
    let a = job(Some("dup"), 0);
    let out = store.submit_admitted(vec![a.clone(), resent(&a)], capped(1)).await;
    let out = out.expect("one job added: it fits a cap of one");
    assert_eq!(
        out,
        vec![
            Submitted { id: a.id, state: JobState::Queued, created: true },
            Submitted { id: a.id, state: JobState::Queued, created: false },
        ],
        "the repeat is answered as the job its key names"
    );
    // The user's limit: one in flight, one key twice adds one more (2 of 2).
    let limit = Admission { per_user: Some(2), ..Admission::default() };
    let b = job(Some("twice"), 0);
    let out = store.submit_admitted(vec![b.clone(), resent(&b)], limit.clone()).await.expect("within the limit");
    assert_eq!((out[1].id, out[1].created), (b.id, false));
    let c = job(Some("third"), 0);
    match store.submit_admitted(vec![c.clone(), resent(&c)], limit.clone()).await {
        Err(StoreError::LimitReached(l)) => assert_eq!(l.to_string(), "user concurrent job limit reached (2)"),
        other => panic!("expected the user's limit, got {other:?}"),
    }
    // Held instead of refused: both answered held, as one job.
    let hold = Admission { queue_on_limit: true, ..limit };
    let out = store.submit_admitted(vec![c.clone(), resent(&c)], hold).await.unwrap();
    assert_eq!(
        out,
        vec![
            Submitted { id: c.id, state: JobState::Held, created: true },
            Submitted { id: c.id, state: JobState::Held, created: false },
        ]
    );
    let events = store.job_events("default", c.id).await.unwrap().unwrap();
    assert_eq!(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), vec!["held"], "logged once");
    // A repeat of a scheduled job is answered scheduled.
    let later = spec(JobSpec { idempotency_key: Some("later".into()), delay_ms: Some(60_000), ..noop() });
    let out = store.submit(vec![later.clone(), resent(&later)]).await.unwrap();
    assert!(out.iter().all(|s| s.id == later.id && s.state == JobState::Scheduled), "{out:?}");
    let page = store.list_jobs("default", JobFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 4, "one job per key");
}
