//! Pins the failed attempts' read behind `GET /v1/errors` on both backends: only the
//! workspace's `attempt_failed` events since the given time are read, newest first, with
//! their job's queue, kind and target (its breaker key) and the error as recorded (its
//! severity included); the filters and the cap hold.

use super::*;
use ferry_core::Severity;
use ferry_store::FailureFilter;

conformance!(failures_are_the_workspaces_own_newest_first_and_filtered);

/// Submits a job of `kind` in `workspace` on `queue` with breaker `target`, and fails its
/// first attempt with `message`, as a retry (`dead: false`) or its death.
pub(super) async fn fail_one(
    store: &Arc<dyn Store>,
    workspace: &str,
    queue: &str,
    target: Option<&str>,
    message: &str,
    dead: bool,
) -> JobId {
    let j = JobSpec { queue: Some(queue.into()), breaker: target.map(Into::into), ..noop() }
        .validate(workspace, "test", time::now_micros(), &Limits::default())
        .unwrap();
    store.submit(vec![j.clone()]).await.unwrap();
    let req = ClaimRequest { queue: queue.into(), limit: 1, worker: "w".into(), lease_ms: 60_000 };
    let c = store.claim(req).await.unwrap().jobs.remove(0);
    let severity = if dead { Severity::High } else { Severity::Low };
    let error = JobError::new(ErrorType::Network, message).with_severity(severity);
    let result = if dead {
        FinishResult::Dead { error: error.clone(), attempt_error: error, output: None }
    } else {
        FinishResult::Retry { retry_in: 60_000_000, error, output: None }
    };
    assert!(store.finish(Finish { id: j.id, attempt: c.attempt, queue: queue.into(), result }).await.unwrap());
    j.id
}

async fn failures_are_the_workspaces_own_newest_first_and_filtered(store: Arc<dyn Store>) {
    let before = time::now_micros() - 1_000_000;
    let first = fail_one(&store, "a", "default", Some("https://x.test:443"), "order 1 failed", false).await;
    let second = fail_one(&store, "a", "default", None, "order 2 failed", true).await;
    let third = fail_one(&store, "a", "other", None, "order 3 failed", false).await;
    fail_one(&store, "b", "default", None, "not a's", true).await;
    // A success and a job that never failed are not failures.
    let ok = job(None, 0);
    store.submit(vec![ok.clone()]).await.unwrap();
    let c = store.claim(claim_req("w", 1)).await.unwrap().jobs.remove(0);
    assert!(store.finish(succeed(ok.id, c.attempt)).await.unwrap());

    let all = FailureFilter { since: before, cap: 100, ..FailureFilter::default() };
    let rows = store.failures("a", all.clone()).await.unwrap();
    let ids: Vec<JobId> = rows.iter().map(|r| r.job_id).collect();
    assert_eq!(ids, [third, second, first], "the workspace's own, newest first");
    assert!(rows.windows(2).all(|w| w[0].at >= w[1].at));
    let r = &rows[2];
    assert_eq!(
        (r.queue.as_str(), r.kind.as_str(), r.target.as_deref()),
        ("default", "noop", Some("https://x.test:443"))
    );
    assert_eq!((r.error.message.as_str(), r.error.severity), ("order 1 failed", Some(Severity::Low)));
    assert_eq!(rows[1].error.severity, Some(Severity::High), "a dead job's attempt keeps its severity");
    assert_eq!(store.failures("b", all.clone()).await.unwrap().len(), 1);
    assert!(store.failures("nobody", all.clone()).await.unwrap().is_empty());

    let only = |f: FailureFilter| {
        let store = store.clone();
        async move { store.failures("a", f).await.unwrap().into_iter().map(|r| r.job_id).collect::<Vec<_>>() }
    };
    assert_eq!(only(FailureFilter { queue: Some("other".into()), ..all.clone() }).await, [third]);
    assert_eq!(only(FailureFilter { kind: Some("noop".into()), ..all.clone() }).await.len(), 3);
    assert!(only(FailureFilter { kind: Some("http".into()), ..all.clone() }).await.is_empty());
    assert_eq!(only(FailureFilter { target: Some("https://x.test:443".into()), ..all.clone() }).await, [first]);
    assert_eq!(only(FailureFilter { cap: 2, ..all.clone() }).await, [third, second], "the newest `cap`");
    let later = time::now_micros() + 60_000_000;
    assert!(only(FailureFilter { since: later, ..all.clone() }).await.is_empty(), "nothing since a later time");
}
