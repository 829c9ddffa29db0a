//! Promise: acknowledged jobs survive a restart; a drain lets running attempts finish
//! within the grace period and hands back the rest without counting them; jobs left
//! running by a crashed process are retried with `worker_lost`.

use crate::harness::{TestServer, attempts};
use ferry_store::ClaimRequest;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_running_attempts_finish_and_jobs_survive() {
    let server = TestServer::start().await;
    let running = server.submit(json!({"kind": "sleep", "input": {"ms": 300}})).await;
    let later = server.submit(json!({"kind": "noop", "delay_ms": 600000, "labels": {"team": "x"}})).await;
    server.wait_state(&running, &["running"]).await;

    let server = server.restart_with(|_| {}).await;
    let job = server.job(&running).await;
    assert_eq!(job["state"], "succeeded", "the drain let the attempt finish: {job:#}");
    assert_eq!(attempts(&job).len(), 1);
    assert_eq!(job["output"], json!({"slept_ms": 300}));
    let job = server.job(&later).await;
    assert_eq!(job["state"], "scheduled", "{job:#}");
    assert_eq!(job["labels"], json!({"team": "x"}));
    assert_eq!(server.count_jobs().await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_back_attempts_past_the_grace_period() {
    let server = TestServer::start_with(|cfg| cfg.shutdown_grace_ms = 200).await;
    let id = server.submit(json!({"kind": "sleep", "input": {"ms": 60000}, "max_attempts": 1})).await;
    server.wait_state(&id, &["running"]).await;

    let server = server.restart_with(|_| {}).await;
    // The handed-back attempt does not count: with max_attempts 1 the job runs again.
    let job = server.wait_job(&id, "the job to run again", |j| j["state"] == "running" && attempts(j).len() == 2).await;
    let list = attempts(&job);
    assert_eq!(list[0]["outcome"], "released", "{job:#}");
    assert_eq!(list[1]["attempt"], 2);
    assert_eq!(job["attempts_used"], 1, "{job:#}");
    assert!(server.event_types(&id).await.contains(&"released".to_string()));

    let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_left_running_by_a_crashed_process_are_retried() {
    // No embedded workers: a ghost claims the job, and "crashes" with it.
    let server = TestServer::start_with(|cfg| cfg.workers = 0).await;
    let id = server.submit(json!({"kind": "noop", "input": {"v": 3}})).await;
    let claimed = server
        .store
        .claim(ClaimRequest { queue: "default".into(), limit: 1, worker: "ghost".into(), lease_ms: 600_000 })
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(server.job(&id).await["state"], "running");

    let server = server.restart_with(|cfg| cfg.workers = 2).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"], json!({"v": 3}));
    let list = attempts(&job);
    assert_eq!(list.len(), 2, "{job:#}");
    assert_eq!(list[0]["worker"], "ghost");
    assert_eq!(list[0]["outcome"], "failed");
    assert_eq!(list[0]["error"]["type"], "worker_lost");
    assert_eq!(list[1]["outcome"], "succeeded");
    server.stop().await;
}
