//! Pins, on both backends, what a store tells its own process: a commit that brings a
//! queue work wakes that queue's dispatchers, a commit that writes to a job's or a run's
//! log wakes the streams watching it, a running job cancelled through the store is
//! announced where the backend has a channel for it (PostgreSQL; SQLite is one process),
//! and a closed store refuses writes as unavailable.

use super::*;
use ferry_store::Subject;
use std::time::Duration;

conformance!(
    commits_wake_their_queues_and_event_streams,
    a_cancelled_running_job_is_announced,
    the_store_names_itself_answers_and_closes,
);

const WITHIN: Duration = Duration::from_secs(30);

fn on(queue: &str) -> NewJob {
    spec(JobSpec { queue: Some(queue.into()), ..noop() })
}

async fn commits_wake_their_queues_and_event_streams(store: Arc<dyn Store>) {
    let signal = store.event_signal();
    // A queue of its own for each step, so that no earlier commit's wake-up can answer.
    let submitted = on("submitted");
    let mut watch = signal.watch(Subject::Job(submitted.id));
    let woken = store.wakeup("submitted");
    store.submit(vec![submitted.clone()]).await.unwrap();
    tokio::time::timeout(WITHIN, woken.notified()).await.expect("a submission wakes its queue's dispatchers");
    tokio::time::timeout(WITHIN, watch.changed()).await.expect("and the new job's event streams");

    let retried = on("retried");
    store.submit(vec![retried.clone()]).await.unwrap();
    let req = ClaimRequest { queue: "retried".into(), ..claim_req("w", 1) };
    let c = store.claim(req).await.unwrap().jobs.remove(0);
    let mut watch = signal.watch(Subject::Job(c.id));
    let woken = store.wakeup("retried");
    // Drop what the submission and the claim signalled: only the finish may answer now.
    while tokio::time::timeout(Duration::ZERO, woken.notified()).await.is_ok() {}
    let retry = FinishResult::Retry { retry_in: 0, error: JobError::new(ErrorType::Network, "down"), output: None };
    let finish = Finish { id: c.id, attempt: c.attempt, queue: "retried".into(), result: retry };
    assert!(store.finish(finish).await.unwrap());
    tokio::time::timeout(WITHIN, woken.notified()).await.expect("a retry wakes its queue");
    tokio::time::timeout(WITHIN, watch.changed()).await.expect("and the job's event streams");

    // A run's log: its node's end reaches it when the run advances.
    let def = json!({"name": "w", "nodes": [{"id": "a", "kind": "noop"}]});
    store.put_workflow("default", "u", "w", def).await.unwrap();
    let run = new_run("w", None, None, json!(null));
    let id = run.id;
    store.create_run(run, planner()).await.unwrap();
    let mut watch = signal.watch(Subject::Run(id));
    let c = store.claim(claim_req("w", 1)).await.unwrap().jobs.remove(0);
    assert!(store.finish(succeed(c.id, c.attempt)).await.unwrap());
    store.advance_runs(vec![id], planner()).await.unwrap();
    tokio::time::timeout(WITHIN, watch.changed()).await.expect("an advance wakes the run's event streams");
}

async fn a_cancelled_running_job_is_announced(store: Arc<dyn Store>) {
    let Some(mut cancelled) = store.cancellations() else {
        // One process runs SQLite's attempts: its API stops them itself.
        assert_eq!(store.backend(), "sqlite", "a store shared by processes announces cancellations");
        return;
    };
    let (running, queued) = (job(None, 0), job(None, 0));
    store.submit(vec![running.clone(), queued.clone()]).await.unwrap();
    assert_eq!(store.claim(claim_req("w", 1)).await.unwrap().jobs[0].id, running.id);
    store.cancel("default", queued.id).await.unwrap();
    store.cancel("default", running.id).await.unwrap();
    let first = tokio::time::timeout(WITHIN, cancelled.recv()).await.expect("announced").unwrap();
    assert_eq!(first, running.id, "only a running job's cancel is announced: no attempt of a queued one runs");
}

async fn the_store_names_itself_answers_and_closes(store: Arc<dyn Store>) {
    assert!(matches!(store.backend(), "sqlite" | "postgres"), "{}", store.backend());
    store.ping().await.expect("an open store answers");
    let kept = job(None, 0);
    store.submit(vec![kept.clone()]).await.unwrap();
    store.close().await;
    match store.submit(vec![job(None, 0)]).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a closed store refuses writes as unavailable, got {other:?}"),
    }
}
