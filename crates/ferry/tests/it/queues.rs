//! Queue administration at run time: a pause that holds from its answer on, on every node
//! and for parked claims too, and resumes (`null`: the configured value); a rate that
//! dispatch respects (on a queue, or on a label key), a smaller concurrency, a depth cap
//! set by an admin.

use crate::harness::{Backend, DEADLINE, TestServer, both};
use chrono::DateTime;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    a_paused_queue_dispatches_nothing_until_resumed,
    null_returns_a_pause_to_its_configured_value,
    dispatch_respects_a_queue_rate,
    dispatch_respects_a_label_rate_and_lets_other_work_pass,
    bad_label_rates_are_refused,
    a_smaller_concurrency_and_a_depth_cap_apply_at_run_time,
    bad_queue_settings_are_refused,
);

async fn put(srv: &TestServer, queue: &str, body: Value) -> (StatusCode, Value) {
    let resp = srv.client().put(format!("{}/v1/queues/{queue}", srv.url())).json(&body).send().await.expect("answer");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn a_paused_queue_dispatches_nothing_until_resumed(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // On PostgreSQL a second node serves the queue too, and takes submissions.
    let peer = match backend {
        Backend::Postgres => Some(srv.peer(|_| {}).await),
        Backend::Sqlite => None,
    };
    // A job run first leaves the queue's dispatchers idle, their claims parked in the store.
    let first = srv.submit(json!({"kind": "noop"})).await;
    srv.wait_state(&first, &["succeeded"]).await;
    let (status, body) = put(&srv, "default", json!({"paused": true})).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(true)), "{body}");
    // At once, before any worker polled the setting: a batch on this node, one on the other.
    let mut ids = srv.submit_batch((0..20).map(|_| json!({"kind": "noop"})).collect()).await;
    if let Some(peer) = &peer {
        ids.extend(peer.submit_batch((0..20).map(|_| json!({"kind": "noop"})).collect()).await);
    }
    // A marker on another queue, submitted after them: once it has run, dispatch had every
    // chance to start the paused batch.
    let marker = srv.submit(json!({"kind": "noop", "queue": "heavy"})).await;
    srv.wait_state(&marker, &["succeeded"]).await;
    if let Some(peer) = &peer {
        let marker = peer.submit(json!({"kind": "noop", "queue": "heavy"})).await;
        peer.wait_state(&marker, &["succeeded"]).await;
    }
    for id in &ids {
        let job = srv.job(id).await;
        assert_eq!(job["state"], "queued", "a paused queue accepts but does not dispatch: {job}");
    }
    let (_, queues) = srv.get("/v1/queues").await;
    let default =
        queues["queues"].as_array().expect("queues").iter().find(|q| q["name"] == "default").cloned().expect("default");
    assert_eq!(default["settings"]["paused"], true, "{default}");
    let (status, _) = put(&srv, "default", json!({"paused": false})).await;
    assert_eq!(status, StatusCode::OK);
    for id in &ids {
        srv.wait_state(id, &["succeeded"]).await;
    }
    if let Some(peer) = peer {
        peer.stop().await;
    }
    srv.stop().await;
}

async fn null_returns_a_pause_to_its_configured_value(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = put(&srv, "default", json!({"paused": true, "max_depth": 7})).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(true)), "{body}");
    // No queue is configured paused: null resumes it, and leaves the other fields be.
    let (status, body) = put(&srv, "default", json!({"paused": null})).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"concurrency": null, "max_depth": 7, "rate": null, "paused": false}))
    );
    let id = srv.submit(json!({"kind": "noop"})).await;
    srv.wait_state(&id, &["succeeded"]).await;
    // A workspace's share: null is not paused.
    let (status, body) = put(&srv, "default?workspace=default", json!({"paused": true})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"paused": true, "rate": null, "queue_paused": false})));
    let (status, body) = put(&srv, "default?workspace=default", json!({"paused": null})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"paused": false, "rate": null, "queue_paused": false})));
    let id = srv.submit(json!({"kind": "noop"})).await;
    srv.wait_state(&id, &["succeeded"]).await;
    srv.stop().await;
}

async fn dispatch_respects_a_queue_rate(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| cfg.workers = 50).await;
    let (status, _) = put(&srv, "default", json!({"rate": 10})).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ids = srv.submit_batch((0..40).map(|_| json!({"kind": "noop"})).collect()).await;
    let starts = start_times(&srv, &ids).await;
    // A bucket of 10 per second with a burst of 10: any one-second window holds at most
    // 20 starts (slack: 1), and 40 starts cannot take less than 3 s (slack: 0.5 s).
    let most = most_in_a_second(&starts);
    assert!(most <= 21, "{most} starts within one second at a rate of 10/s");
    let span = (starts[starts.len() - 1] - starts[0]) as f64 / 1e6;
    assert!(span >= 2.5, "40 starts at 10/s took only {span} s");
    srv.stop().await;
}

/// The first attempts' start times of these jobs, in microseconds, sorted.
async fn start_times(srv: &TestServer, ids: &[String]) -> Vec<i64> {
    let mut starts = Vec::new();
    for id in ids {
        let job = srv.wait_state(id, &["succeeded"]).await;
        let at = job["attempts"][0]["started_at"].as_str().expect("started_at");
        starts.push(DateTime::parse_from_rfc3339(at).expect("time").timestamp_micros());
    }
    starts.sort();
    starts
}

/// The most starts within any one second.
fn most_in_a_second(starts: &[i64]) -> usize {
    starts
        .iter()
        .enumerate()
        .map(|(i, t)| starts[i..].iter().take_while(|u| **u < t + 1_000_000).count())
        .max()
        .unwrap_or(0)
}

async fn dispatch_respects_a_label_rate_and_lets_other_work_pass(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| cfg.workers = 50).await;
    let resp = srv
        .client()
        .put(format!("{}/v1/limits/rates/api", srv.url()))
        .json(&json!({"rate": 5}))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, rates) = srv.get("/v1/limits/rates").await;
    assert_eq!(rates, json!({"rates": [{"label": "api", "rate": 5.0}]}));
    // 20 jobs aimed at one API, then 20 that are not, all queued at once.
    let limited =
        srv.submit_batch((0..20).map(|_| json!({"kind": "noop", "labels": {"api": "github"}})).collect()).await;
    let others = srv.submit_batch((0..20).map(|_| json!({"kind": "noop", "labels": {"team": "x"}})).collect()).await;
    let limited = start_times(&srv, &limited).await;
    let others = start_times(&srv, &others).await;
    // 5 per second with a burst of 5: at most 10 in any second (slack: 1), and 20 take
    // at least 3 s (slack: 0.5 s).
    let most = most_in_a_second(&limited);
    assert!(most <= 11, "{most} starts of `api=github` within one second at 5/s");
    let span = (limited[limited.len() - 1] - limited[0]) as f64 / 1e6;
    assert!(span >= 2.5, "20 starts at 5/s took only {span} s");
    // The unlabelled jobs queued behind them did not wait for them.
    assert!(others[others.len() - 1] < limited[limited.len() - 1], "other work passed the rate-limited work");
    // Removing the rate lets the label's work go at once.
    let resp = srv.client().delete(format!("{}/v1/limits/rates/api", srv.url())).send().await.expect("answer");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let ids = srv.submit_batch((0..30).map(|_| json!({"kind": "noop", "labels": {"api": "github"}})).collect()).await;
    assert_eq!(start_times(&srv, &ids).await.len(), 30);
    srv.stop().await;
}

async fn bad_label_rates_are_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let put = |label: &'static str, body: Value| {
        let req = srv.client().put(format!("{}/v1/limits/rates/{label}", srv.url())).json(&body);
        async move {
            let resp = req.send().await.expect("answer");
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (label, body, field) in [
        ("api", json!({"rate": 0}), "rate"),
        ("api", json!({"rate": -1}), "rate"),
        ("api", json!({"rate": 1_000_001}), "rate"),
        ("api", json!({"rate": "fast"}), "rate"),
        ("api", json!({}), "rate"),
        ("api", json!({"rate": 1, "burst": 3}), "burst"),
        ("a%20b", json!({"rate": 1}), "label"),
    ] {
        let (status, answer) = put(label, body.clone()).await;
        assert_eq!((status, &answer["error"]["field"]), (StatusCode::BAD_REQUEST, &json!(field)), "{body}: {answer}");
    }
    // The edges are accepted.
    for rate in [0.001, 1_000_000.0] {
        let (status, answer) = put("api", json!({"rate": rate})).await;
        assert_eq!((status, &answer["rate"]), (StatusCode::OK, &json!(rate)), "{answer}");
    }
    let resp = srv.client().delete(format!("{}/v1/limits/rates/nope", srv.url())).send().await.expect("answer");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (_, rates) = srv.get("/v1/limits/rates").await;
    assert_eq!(rates, json!({"rates": [{"label": "api", "rate": 1_000_000.0}]}), "only the accepted rate is set");
    srv.stop().await;
}

async fn a_smaller_concurrency_and_a_depth_cap_apply_at_run_time(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = put(&srv, "default", json!({"concurrency": 1, "max_depth": 3})).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"concurrency": 1, "max_depth": 3, "rate": null, "paused": false}))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Long enough that none ends before the batch below is refused, on a loaded machine.
    let ids = srv.submit_batch((0..3).map(|_| json!({"kind": "sleep", "input": {"ms": 1000}})).collect()).await;
    // The depth cap set at run time holds (3 waiting at most, one may already run).
    let (status, body) = srv.post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, {"kind": "noop"}]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let started = Instant::now();
    loop {
        let (_, queues) = srv.get("/v1/queues").await;
        let q =
            queues["queues"].as_array().expect("queues").iter().find(|q| q["name"] == "default").cloned().expect("q");
        assert!(q["running"].as_u64().unwrap_or(0) <= 1, "one at a time: {q}");
        let done = all_succeeded(&srv, &ids).await;
        if done {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // null returns a field to the configured value.
    let (_, body) = put(&srv, "default", json!({"concurrency": null, "max_depth": null})).await;
    assert_eq!(body["concurrency"], Value::Null);
    srv.stop().await;
}

async fn all_succeeded(srv: &TestServer, ids: &[String]) -> bool {
    for id in ids {
        if srv.job(id).await["state"] != "succeeded" {
            return false;
        }
    }
    true
}

async fn bad_queue_settings_are_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    for (body, field) in [
        (json!({"rate": 0}), "rate"),
        (json!({"rate": "fast"}), "rate"),
        (json!({"concurrency": -1}), "concurrency"),
        (json!({"paused": "yes"}), "paused"),
        (json!({"colour": 1}), "colour"),
    ] {
        let (status, answer) = put(&srv, "default", body.clone()).await;
        assert_eq!((status, &answer["error"]["field"]), (StatusCode::BAD_REQUEST, &json!(field)), "{body}: {answer}");
    }
    let (status, _) = put(&srv, "nope", json!({"paused": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, queues) = srv.get("/v1/queues").await;
    assert!(
        queues["queues"].as_array().expect("queues").iter().all(|q| q.get("settings").is_none()),
        "nothing was set"
    );
    srv.stop().await;
}
