//! Promise: acknowledged jobs survive a restart; a drain lets running attempts finish
//! within the grace period and hands back the rest without counting them; jobs left
//! running by a crashed process are retried with `worker_lost`.

use crate::harness::{Backend, TestServer, attempts, both, ts};
use ferry_store::ClaimRequest;
use reqwest::StatusCode;
use serde_json::json;

both!(
    drain_lets_running_attempts_finish_and_jobs_survive,
    drain_hands_back_attempts_past_the_grace_period,
    jobs_left_running_by_a_crashed_process_are_retried
);

async fn drain_lets_running_attempts_finish_and_jobs_survive(backend: Backend) {
    let server = TestServer::start(backend).await;
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

async fn drain_hands_back_attempts_past_the_grace_period(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| cfg.shutdown_grace_ms = 200).await;
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

async fn jobs_left_running_by_a_crashed_process_are_retried(backend: Backend) {
    // No embedded workers: a ghost claims the job, and "crashes" with it.
    let server = TestServer::start_with(backend, |cfg| cfg.workers = 0).await;
    let id = server.submit(json!({"kind": "noop", "input": {"v": 3}})).await;
    // On SQLite the data directory's lock proves the old process gone, so its jobs are
    // retried at once on restart: a lease far longer than the wait below shows that. On
    // PostgreSQL other processes may still be running them: they are retried when the
    // crashed process's lease (the configured one, 3 s here) expires.
    let lease_ms = match backend {
        Backend::Sqlite => 600_000,
        Backend::Postgres => server.cfg().lease_ms,
    };
    let claimed = server
        .store
        .claim(ClaimRequest { queue: "default".into(), limit: 1, worker: "ghost".into(), lease_ms })
        .await
        .expect("claim")
        .jobs;
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
    if backend == Backend::Postgres {
        // Another process may still hold the job: only its expired lease frees it.
        let freed = ts(&list[0]["started_at"]) + chrono::Duration::milliseconds(lease_ms as i64);
        assert!(ts(&list[1]["started_at"]) >= freed, "retried before the ghost's lease expired: {job:#}");
    }
    server.stop().await;
}
