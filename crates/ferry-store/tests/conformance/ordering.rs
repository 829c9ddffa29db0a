//! Pins the ordered jobs' promises on both backends: a job knows the unfinished jobs of
//! its key submitted before it (the head and the nearest), only within its workspace; a
//! job held back by its order waits as `scheduled` without spending its attempt; the
//! key's release lets only the head go, and only if a held-back attempt left it waiting
//! (a head delayed at submission keeps its time); a cancel of the head lets the next go.

use super::*;
use ferry_store::Wait;

conformance!(
    a_job_knows_what_is_ahead_of_it_in_its_key,
    the_release_lets_only_a_held_back_head_go,
    cancelling_the_head_lets_the_next_go,
);

fn ordered(key: &str) -> NewJob {
    spec(JobSpec { ordering_key: Some(key.into()), ..noop() })
}

/// Holds back claimed job `j` behind `after`, as the engine does, for an hour.
async fn hold_back(store: &Arc<dyn Store>, j: &ferry_store::ClaimedJob, after: JobId) {
    let wait = FinishResult::Deferred { retry_in: 3_600_000_000, wait: Wait::Order { after: Some(after) } };
    assert!(store.finish(end(j.id, j.attempt, wait)).await.unwrap());
}

async fn a_job_knows_what_is_ahead_of_it_in_its_key(store: Arc<dyn Store>) {
    let (a, b, c, other) = (ordered("k"), ordered("k"), ordered("k"), ordered("other"));
    let mut elsewhere = ordered("k");
    elsewhere.workspace = "another".into();
    store.submit(vec![a.clone(), b.clone(), c.clone(), other.clone()]).await.unwrap();
    store.submit(vec![elsewhere.clone()]).await.unwrap();
    assert_eq!(store.order_ahead("default", "k", a.id).await.unwrap(), None, "the first is the head");
    let ahead = store.order_ahead("default", "k", c.id).await.unwrap().expect("two ahead of the third");
    assert_eq!((ahead.head, ahead.nearest), (a.id, b.id));
    assert_eq!(store.order_ahead("default", "other", other.id).await.unwrap(), None, "keys are apart");
    assert_eq!(store.order_ahead("another", "k", elsewhere.id).await.unwrap(), None, "and so are workspaces");
    let claimed = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    let first = claimed.iter().find(|j| j.id == a.id).expect("claims do not look at keys");
    assert_eq!(first.ordering_key.as_deref(), Some("k"), "a claim carries the key");
    assert!(store.finish(succeed(a.id, first.attempt)).await.unwrap());
    let ahead = store.order_ahead("default", "k", c.id).await.unwrap().expect("one ahead once the head ended");
    assert_eq!((ahead.head, ahead.nearest), (b.id, b.id));
    let rec = store.get_job("default", c.id).await.unwrap().unwrap();
    assert_eq!(rec.ordering_key.as_deref(), Some("k"), "a job shows its key");
}

async fn the_release_lets_only_a_held_back_head_go(store: Arc<dyn Store>) {
    let delayed = JobSpec { ordering_key: Some("k".into()), delay_ms: Some(3_600_000), ..noop() };
    let (head, b, c) = (spec(delayed), ordered("k"), ordered("k"));
    store.submit(vec![head.clone(), b.clone(), c.clone()]).await.unwrap();
    let claimed = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(claimed.len(), 2, "the delayed head is not due");
    for j in &claimed {
        hold_back(&store, j, head.id).await;
    }
    let rec = store.get_job("default", b.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    assert_eq!(rec.attempts[0].outcome, Some(AttemptOutcome::Released), "the held-back attempt does not count");
    let events = store.job_events("default", b.id).await.unwrap().unwrap();
    let wait = events.iter().find(|e| e.event_type == "order_wait").expect("the wait is on the job's log");
    assert_eq!(wait.data["after"], head.id.to_string());
    assert!(wait.data["run_at"].is_string() && wait.data["delay_ms"].as_i64() > Some(3_000_000), "{}", wait.data);
    assert_eq!(store.order_release("default", "k").await.unwrap(), None, "a head delayed at submission keeps its time");
    assert_eq!(store.get_job("default", head.id).await.unwrap().unwrap().state, JobState::Scheduled);
    store.cancel("default", head.id).await.unwrap();
    // The cancel let `b` go (the head now); `c` stays behind it.
    let next = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), [b.id], "only the new head goes");
    assert_eq!(next[0].attempts_counted, 1, "a fresh attempt, the first counted");
    assert_eq!(store.order_release("default", "k").await.unwrap(), None, "a running head is not released again");
    assert!(store.finish(succeed(b.id, next[0].attempt)).await.unwrap());
    assert_eq!(store.order_release("default", "k").await.unwrap(), Some(c.id), "the end of `b` lets `c` go");
    assert_eq!(store.order_release("default", "k").await.unwrap(), None, "once");
    assert_eq!(store.claim(claim_req("w", 10)).await.unwrap().jobs[0].id, c.id);
}

async fn cancelling_the_head_lets_the_next_go(store: Arc<dyn Store>) {
    let (a, b) = (ordered("k"), ordered("k"));
    store.submit(vec![a.clone(), b.clone()]).await.unwrap();
    let claimed = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    let held = claimed.iter().find(|j| j.id == b.id).unwrap();
    hold_back(&store, held, a.id).await;
    assert!(store.claim(claim_req("w", 10)).await.unwrap().jobs.is_empty());
    store.cancel("default", a.id).await.unwrap();
    let next = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), [b.id], "a cancelled running head lets the next go");
}
