//! Promise: finished jobs are pruned after the retention period, by the server itself,
//! while dead jobs stay in the dead-letter queue until replayed.

use crate::harness::{Backend, DEADLINE, TestServer, both};
use reqwest::StatusCode;
use serde_json::json;

both!(finished_jobs_are_pruned_and_dead_ones_kept);

async fn finished_jobs_are_pruned_and_dead_ones_kept(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.retention_ms = 1;
        cfg.prune_ms = 50;
    })
    .await;
    let done = server.submit(json!({"kind": "noop"})).await;
    let dead = server.submit(json!({"kind": "fail", "input": {"retryable": false}})).await;
    let waiting = server.submit(json!({"kind": "noop", "delay_ms": 600_000})).await;
    assert_eq!(server.wait_state(&dead, &["dead"]).await["state"], "dead");
    let started = std::time::Instant::now();
    loop {
        let (status, _) = server.get(&format!("/v1/jobs/{done}")).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the finished job was never pruned");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, events) = server.get(&format!("/v1/jobs/{done}/events")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its events went with it: {events}");
    let (status, job) = server.get(&format!("/v1/jobs/{dead}")).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("dead")), "dead jobs are kept");
    let (status, job) = server.get(&format!("/v1/jobs/{waiting}")).await;
    assert_eq!((status, job["state"].as_str()), (StatusCode::OK, Some("scheduled")), "unfinished jobs are kept");
    server.stop().await;
}
