//! Promise: a request may wait for its job or run to end (`?wait=`): a submission is
//! answered with the ended job when it ends within the wait and with 202 when it does
//! not; a read answers as soon as the job or run ended; the end wakes a request waiting
//! on another node; a bad wait is refused and submits nothing.

use crate::harness::{Backend, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::json;

both!(
    a_submission_that_waits_gets_the_ended_job,
    a_submission_that_waits_too_little_gets_202,
    a_read_that_waits_answers_at_the_end,
    a_run_may_be_waited_for,
    a_bad_wait_is_refused_and_submits_nothing,
);

async fn a_submission_that_waits_gets_the_ended_job(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, job) = srv.post("/v1/jobs?wait=30s", json!({"kind": "sleep", "input": {"ms": 100}})).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!((job["state"].as_str(), &job["output"]), (Some("succeeded"), &json!({"slept_ms": 100})), "{job:#}");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "the whole job: {job:#}");
    let (status, dead) = srv.post("/v1/jobs?wait=30s", json!({"kind": "fail", "input": {"retryable": false}})).await;
    assert_eq!((status, dead["state"].as_str()), (StatusCode::OK, Some("dead")), "{dead:#}");
    srv.stop().await;
}

async fn a_submission_that_waits_too_little_gets_202(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, got) = srv.post("/v1/jobs?wait=200ms", json!({"kind": "sleep", "input": {"ms": 60_000}})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    assert_eq!((got["created"].as_bool(), got["state"].as_str()), (Some(true), Some("running")), "{got}");
    let id = got["id"].as_str().expect("an id");
    assert_eq!(srv.job(id).await["state"], "running", "still running, not cancelled by the wait");
    srv.stop().await;
}

async fn a_read_that_waits_answers_at_the_end(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let id = srv.submit(json!({"kind": "sleep", "input": {"ms": 300}})).await;
    // Waiting up to a minute: only the job's end can answer before the wait is over.
    let (status, job) = srv.get(&format!("/v1/jobs/{id}?wait=1m")).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{job:#}");
    // A short wait on a job that does not end answers as it is.
    let slow = srv.submit(json!({"kind": "sleep", "input": {"ms": 60_000}})).await;
    let (status, job) = srv.get(&format!("/v1/jobs/{slow}?wait=100ms")).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("running")), "{job:#}");
    let (status, got) = srv.get("/v1/jobs/01a24276-c088-77ad-8c40-1558681ae4fb?wait=1s").await;
    assert_error(&(status, got), StatusCode::NOT_FOUND, "not_found", None);
    srv.stop().await;
}

async fn a_run_may_be_waited_for(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let def = json!({"name": "two", "nodes": [
        {"id": "a", "kind": "sleep", "input": {"ms": 100}},
        {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"after": "{{ nodes.a.output.slept_ms }}"}}
    ]});
    assert_eq!(srv.post("/v1/workflows", def).await.0, StatusCode::CREATED);
    let (status, run) = srv.post("/v1/runs?wait=30s", json!({"workflow": "two"})).await;
    assert_eq!((status, run["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{run:#}");
    assert_eq!(run["nodes"].as_array().map(Vec::len), Some(2), "the whole run: {run:#}");
    let (status, started) = srv.post("/v1/runs?wait=0ms", json!({"workflow": "two"})).await;
    assert_eq!((status, started["state"].as_str()), (StatusCode::ACCEPTED, Some("running")), "{started}");
    let id = started["id"].as_str().expect("an id");
    let (status, run) = srv.get(&format!("/v1/runs/{id}?wait=1m")).await;
    assert_eq!((status, run["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{run:#}");
    srv.stop().await;
}

async fn a_bad_wait_is_refused_and_submits_nothing(backend: Backend) {
    let srv = TestServer::start(backend).await;
    for wait in ["61s", "2m", "60001ms", "30", "soon", "-1s"] {
        let got = srv.post(&format!("/v1/jobs?wait={wait}"), json!({"kind": "noop"})).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_query", Some("wait"));
    }
    assert_eq!(srv.count_jobs().await, 0, "nothing was submitted");
    let (status, job) = srv.post("/v1/jobs?wait=60s", json!({"kind": "noop"})).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("succeeded")), "the edge is allowed: {job}");
    srv.stop().await;
}

/// On PostgreSQL, a request waiting on one node is answered when the job ends on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_on_another_node_answers_the_wait() {
    if !crate::harness::postgres_available().await {
        return;
    }
    // `api` runs no engine: the job can only end on `worker`.
    let worker = TestServer::start(Backend::Postgres).await;
    let api = worker.peer(|cfg| cfg.workers = 0).await;
    let (status, job) = api.post("/v1/jobs?wait=1m", json!({"kind": "sleep", "input": {"ms": 200}})).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{job:#}");
    api.stop().await;
    worker.stop().await;
}
