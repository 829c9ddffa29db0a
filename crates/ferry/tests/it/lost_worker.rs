//! Promise: a worker that stops heartbeating loses its job — the reaper fails the attempt
//! with `worker_lost` and retries it — and the lost worker's late result is fenced out.

use crate::harness::{Backend, TestServer, attempts, both, poll};
use ferry::config::QueueSettings;
use ferry_store::{ClaimRequest, Finish, FinishResult};
use serde_json::json;

both!(reaper_fails_a_lost_attempt_and_fences_the_ghost);

async fn reaper_fails_a_lost_attempt_and_fences_the_ghost(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.insert("other".into(), QueueSettings { concurrency: Some(0), max_depth: None, severity: None });
    })
    .await;
    let id = server.submit(json!({"kind": "noop", "queue": "other", "input": {"x": 1}})).await;

    // A ghost worker claims the job directly through the store and never finishes it.
    let claimed = poll("the ghost to claim the job", async || {
        let got = server
            .store
            .claim(ClaimRequest { queue: "other".into(), limit: 1, worker: "ghost".into(), lease_ms: 200 })
            .await
            .expect("claim")
            .jobs;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(claimed.len(), 1);
    let job = &claimed[0];
    assert_eq!(job.id.to_string(), id);
    assert_eq!(job.attempt, 1);

    let seen = server
        .wait_job(&id, "the reaper to fail the ghost's attempt", |j| {
            j["state"] != "running" && attempts(j).first().is_some_and(|a| a["outcome"] == "failed")
        })
        .await;
    let a = &attempts(&seen)[0];
    assert_eq!(a["worker"], "ghost");
    assert_eq!(a["error"]["type"], "worker_lost", "{seen:#}");
    assert_eq!(a["error"]["retryable"], true);
    assert!(a["finished_at"].is_string());
    // Retried by the usual rule; with no worker on its queue it waits.
    assert!(seen["state"] == "retrying" || seen["state"] == "queued", "{seen:#}");
    assert_eq!(seen["error"]["type"], "worker_lost");
    let types = server.event_types(&id).await;
    assert_eq!(types, ["queued", "started", "attempt_failed", "retry_scheduled"]);

    // The ghost comes back with its stale attempt number: the fence refuses it.
    let late = Finish {
        id: job.id,
        attempt: job.attempt,
        queue: job.queue.clone(),
        result: FinishResult::Succeeded { output: json!({"late": true}) },
    };
    assert!(!server.store.finish(late).await.expect("finish"), "a stale worker's result must be refused");
    let after = server.job(&id).await;
    assert_eq!(after["state"], seen["state"], "the refused result changed nothing: {after:#}");
    assert_eq!(after["output"], serde_json::Value::Null);
    assert_eq!(attempts(&after)[0]["outcome"], "failed");
    server.stop().await;
}
