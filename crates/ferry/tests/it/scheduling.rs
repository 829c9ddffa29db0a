//! Promise: ready jobs start highest priority first, and a delayed job waits for its
//! `run_at` (given as a delay or a time) before it starts.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, ts};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

both!(
    higher_priority_starts_first,
    delayed_job_waits_for_its_time,
    run_at_as_a_time,
    run_at_and_delay_together_are_refused,
    queue_concurrency_caps_running_attempts
);

async fn higher_priority_starts_first(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.get_mut("default").expect("the default queue").concurrency = Some(1);
    })
    .await;
    let blocker = server.submit(json!({"kind": "sleep", "input": {"ms": 300}})).await;
    server.wait_state(&blocker, &["running"]).await;

    let ids = server
        .submit_batch(vec![
            json!({"kind": "noop", "priority": 1}),
            json!({"kind": "noop", "priority": 5}),
            json!({"kind": "noop", "priority": 3}),
        ])
        .await;
    let mut started = Vec::new();
    for (id, priority) in ids.iter().zip([1, 5, 3]) {
        let job = server.wait_state(id, &["succeeded", "dead"]).await;
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(job["priority"], priority);
        started.push((ts(&attempts(&job)[0]["started_at"]), priority));
    }
    let blocker = server.job(&blocker).await;
    assert_eq!(blocker["state"], "succeeded");
    let blocker_end = ts(&attempts(&blocker)[0]["finished_at"]);
    assert!(started.iter().all(|(at, _)| *at >= blocker_end), "one slot: nothing started before the blocker ended");

    started.sort();
    let order: Vec<i32> = started.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, [5, 3, 1], "start times: {started:?}");
    assert!(started.windows(2).all(|w| w[0].0 < w[1].0), "one at a time: {started:?}");
    server.stop().await;
}

async fn delayed_job_waits_for_its_time(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.post("/v1/jobs", json!({"kind": "noop", "delay_ms": 300})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "scheduled");
    let id = body["id"].as_str().unwrap().to_string();
    let job = server.job(&id).await;
    let run_at = ts(&job["run_at"]);
    assert!(run_at > ts(&job["created_at"]), "{job:#}");

    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(ts(&job["run_at"]), run_at, "run_at is kept");
    assert!(ts(&attempts(&job)[0]["started_at"]) >= run_at, "started before its run_at: {job:#}");
    let events = server.events(&id).await;
    assert_eq!(events[0]["type"], "scheduled");
    assert_eq!(ts(&events[0]["data"]["run_at"]), run_at);
    server.stop().await;
}

async fn run_at_as_a_time(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Far enough ahead that a loaded machine's submission does not reach it.
    let at = (Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339_opts(SecondsFormat::Micros, true);
    let (status, body) = server.post("/v1/jobs", json!({"kind": "noop", "run_at": at})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "scheduled");
    let id = body["id"].as_str().unwrap().to_string();
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(ts(&job["run_at"]), ts(&json!(at)), "run_at is the time given");
    assert!(ts(&attempts(&job)[0]["started_at"]) >= ts(&json!(at)), "{job:#}");

    // A time already past means now.
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (status, body) = server.post("/v1/jobs", json!({"kind": "noop", "run_at": past})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "queued");

    // A time with an offset is the same instant.
    let offset = (Utc::now() + chrono::Duration::hours(2))
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Micros, false);
    let (status, body) = server.post("/v1/jobs", json!({"kind": "noop", "run_at": offset})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "scheduled");
    let job = server.job(body["id"].as_str().unwrap()).await;
    assert_eq!(ts(&job["run_at"]), ts(&json!(offset)));
    server.stop().await;
}

async fn run_at_and_delay_together_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let at = (Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
    let got = server.post("/v1/jobs", json!({"kind": "noop", "run_at": at, "delay_ms": 100})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("delay_ms"));
    assert_eq!(server.count_jobs().await, 0);
    server.stop().await;
}

async fn queue_concurrency_caps_running_attempts(backend: Backend) {
    // A stand-in target that counts the requests it holds at once: the attempts executing
    // at once, whatever the store shows as leased (prefetched or being recorded).
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let hold = {
        let (now, most) = (now.clone(), most.clone());
        move || {
            let (now, most) = (now.clone(), most.clone());
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                "held"
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hold", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/hold", get(hold))).await });
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.get_mut("default").expect("the default queue").concurrency = Some(2);
    })
    .await;
    let ids = server.submit_batch((0..6).map(|_| json!({"kind": "http", "input": {"url": url}})).collect()).await;
    for id in &ids {
        let job = server.wait_state(id, &["succeeded", "dead"]).await;
        assert_eq!(job["state"], "succeeded", "{job:#}");
    }
    // Never more than two at once, and two were reached: the cap, not a lack of work.
    assert_eq!(most.load(Ordering::SeqCst), 2, "attempts executing at once");
    server.stop().await;
}
