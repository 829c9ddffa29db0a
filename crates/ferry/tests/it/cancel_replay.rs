//! Promise: a cancelled job never runs again (a running attempt is stopped), only
//! unfinished jobs can be cancelled, and replay gives a dead or cancelled job fresh
//! attempts; a finished job can be deleted, an unfinished one cannot.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, poll};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    cancel_a_scheduled_job,
    cancel_a_running_job_stops_its_attempt,
    cancel_refuses_finished_unknown_and_malformed_ids,
    replay_runs_a_dead_job_again,
    replay_runs_a_cancelled_job,
    delete_removes_only_finished_jobs
);

async fn delete_removes_only_finished_jobs(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dead = server.submit(json!({"kind": "fail", "input": {"retryable": false}})).await;
    let waiting = server.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    server.wait_state(&dead, &["dead"]).await;
    let delete = async |id: &str| {
        let resp = server.client().delete(format!("{}/v1/jobs/{id}", server.url())).send().await.unwrap();
        let status = resp.status();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    assert_error(&delete(&waiting).await, StatusCode::CONFLICT, "invalid_state", None);
    assert_eq!(delete(&dead).await.0, StatusCode::NO_CONTENT);
    assert_eq!(server.get(&format!("/v1/jobs/{dead}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.get(&format!("/v1/jobs/{dead}/events")).await.0, StatusCode::NOT_FOUND);
    assert_error(&delete(&dead).await, StatusCode::NOT_FOUND, "not_found", None);
    assert_error(&delete("nope").await, StatusCode::BAD_REQUEST, "invalid_field", Some("id"));
    assert_eq!(server.job(&waiting).await["state"], "scheduled", "the refused delete changed nothing");
    server.stop().await;
}

async fn cancel_a_scheduled_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "noop", "delay_ms": 60000})).await;
    assert_eq!(server.job(&id).await["state"], "scheduled");

    let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": id, "state": "cancelled"}));

    let job = server.job(&id).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["attempts"], json!([]), "a job cancelled before it ran has no attempts");
    assert_eq!(job["error"]["type"], "cancelled");
    assert_eq!(server.event_types(&id).await, ["scheduled", "cancelled"]);

    // Cancelling again: it already finished.
    let again = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_error(&again, StatusCode::CONFLICT, "invalid_state", None);
    server.stop().await;
}

async fn cancel_a_running_job_stops_its_attempt(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "sleep", "input": {"ms": 60000}})).await;
    server.wait_state(&id, &["running"]).await;

    let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");

    // The engine stops the attempt rather than letting it sleep on.
    poll("the cancelled attempt to stop", async || (server.engine_running() == 0).then_some(())).await;

    let job = server.job(&id).await;
    assert_eq!(job["state"], "cancelled", "{job:#}");
    assert_eq!(job["error"]["type"], "cancelled");
    let list = attempts(&job);
    assert_eq!(list.len(), 1, "{job:#}");
    assert_eq!(list[0]["outcome"], "cancelled");
    assert!(list[0]["finished_at"].is_string(), "{job:#}");
    assert_eq!(job["output"], Value::Null);
    let types = server.event_types(&id).await;
    assert_eq!(types, ["queued", "started", "cancelled"]);
    server.stop().await;
}

async fn cancel_refuses_finished_unknown_and_malformed_ids(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "noop"})).await;
    server.wait_state(&id, &["succeeded"]).await;
    let done = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_error(&done, StatusCode::CONFLICT, "invalid_state", None);
    assert_eq!(server.job(&id).await["state"], "succeeded", "a refused cancel changes nothing");

    let unknown = uuid::Uuid::now_v7();
    let missing = server.post(&format!("/v1/jobs/{unknown}/cancel"), json!({})).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found", None);

    let bad = server.post("/v1/jobs/not-a-uuid/cancel", json!({})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_field", Some("id"));
    server.stop().await;
}

async fn replay_runs_a_dead_job_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server
        .submit(
            json!({"kind": "fail", "input": {"type": "network", "retryable": false, "times": 1}, "max_attempts": 3}),
        )
        .await;
    let dead = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(dead["state"], "dead", "{dead:#}");
    assert_eq!(attempts(&dead).len(), 1);

    let (status, body) = server.post(&format!("/v1/jobs/{id}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": id, "state": "queued"}));

    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"], json!({"attempt": 2}), "attempts are numbered over the job's whole life");
    assert_eq!(job["error"], Value::Null, "the old error is cleared");
    assert_eq!(job["attempts_used"], 1, "a replay starts with fresh attempts");
    let list = attempts(&job);
    assert_eq!(list.len(), 2, "the dead attempt stays in the history: {job:#}");
    assert_eq!(list[0]["outcome"], "failed");
    assert_eq!(list[1]["attempt"], 2);
    assert_eq!(list[1]["outcome"], "succeeded");
    let types = server.event_types(&id).await;
    assert_eq!(types, ["queued", "started", "attempt_failed", "dead", "replayed", "queued", "started", "succeeded"]);

    // A succeeded job cannot be replayed; an unknown one is not found.
    let again = server.post(&format!("/v1/jobs/{id}/replay"), json!({})).await;
    assert_error(&again, StatusCode::CONFLICT, "invalid_state", None);
    let unknown = uuid::Uuid::now_v7();
    let missing = server.post(&format!("/v1/jobs/{unknown}/replay"), json!({})).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found", None);
    server.stop().await;
}

async fn replay_runs_a_cancelled_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "noop", "input": {"v": 1}, "delay_ms": 60000})).await;
    let (status, _) = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = server.post(&format!("/v1/jobs/{id}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "replay makes the job due now: {job:#}");
    assert_eq!(job["output"], json!({"v": 1}));
    assert_eq!(attempts(&job).len(), 1);

    // A queued or running job is not replayable either.
    let blocker = server.submit(json!({"kind": "sleep", "input": {"ms": 60000}})).await;
    server.wait_state(&blocker, &["running"]).await;
    let running = server.post(&format!("/v1/jobs/{blocker}/replay"), json!({})).await;
    assert_error(&running, StatusCode::CONFLICT, "invalid_state", None);
    let (status, _) = server.post(&format!("/v1/jobs/{blocker}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
