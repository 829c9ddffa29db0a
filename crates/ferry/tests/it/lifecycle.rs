//! Promise: every built-in kind runs to its documented end — state, output, attempts,
//! error type and retryability — including `http` against a real (local) remote.

use crate::harness::{Backend, TestServer, attempts, both, client, ts};
use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

both!(
    noop_returns_its_input,
    sleep_waits_then_succeeds,
    fail_fails_its_first_times_attempts_then_succeeds,
    http_success_keeps_the_response,
    http_failures_are_classified,
    output_over_the_limit_fails_with_resource_limit
);

/// Asserts the shape every finished attempt has.
fn assert_finished_attempts(job: &Value, outcomes: &[&str]) {
    let list = attempts(job);
    assert_eq!(list.len(), outcomes.len(), "attempts of {job:#}");
    for (i, (a, outcome)) in list.iter().zip(outcomes).enumerate() {
        assert_eq!(a["attempt"], json!(i + 1), "{a}");
        assert_eq!(a["outcome"], json!(outcome), "{a}");
        assert!(a["worker"].as_str().is_some_and(|w| !w.is_empty()), "{a}");
        assert!(ts(&a["finished_at"]) >= ts(&a["started_at"]), "{a}");
    }
}

async fn noop_returns_its_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    let input = json!({"a": 1, "b": [true, null, "x"], "c": {"d": 2.5}});
    let id = server.submit(json!({"kind": "noop", "input": input})).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"], input);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["attempts_used"], 1);
    assert!(job["finished_at"].is_string(), "{job}");
    assert_finished_attempts(&job, &["succeeded"]);
    assert_eq!(attempts(&job)[0]["error"], Value::Null);
    server.stop().await;
}

async fn sleep_waits_then_succeeds(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "sleep", "input": {"ms": 50}})).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"], json!({"slept_ms": 50}));
    assert_finished_attempts(&job, &["succeeded"]);
    // Ordering of recorded times: the attempt's end was recorded after its 50 ms sleep.
    let a = &attempts(&job)[0];
    assert!((ts(&a["finished_at"]) - ts(&a["started_at"])).num_milliseconds() >= 50, "{a}");
    server.stop().await;
}

async fn fail_fails_its_first_times_attempts_then_succeeds(backend: Backend) {
    let server = TestServer::start(backend).await;
    let backoff = json!({"initial_ms": 5, "max_ms": 5, "multiplier": 1.0, "jitter": "none"});
    let id = server
        .submit(
            json!({"kind": "fail", "input": {"type": "network", "times": 1}, "backoff": backoff, "max_attempts": 3}),
        )
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"], json!({"attempt": 2}));
    assert_finished_attempts(&job, &["failed", "succeeded"]);
    let first = &attempts(&job)[0];
    assert_eq!(first["error"]["type"], "network");
    assert_eq!(first["error"]["retryable"], true);
    assert_eq!(job["error"], Value::Null, "a succeeded job carries no error: {job}");

    // Without `times` it fails every attempt, with the type and retryability asked for.
    let id = server
        .submit(json!({
            "kind": "fail",
            "input": {"type": "exit_status", "retryable": true, "message": "boom"},
            "backoff": backoff,
            "max_attempts": 2
        }))
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_finished_attempts(&job, &["failed", "failed"]);
    assert_eq!(job["error"]["type"], "exit_status");
    assert_eq!(job["error"]["retryable"], true);
    assert!(job["error"]["message"].as_str().unwrap().contains("boom"), "{job}");
    assert_eq!(job["attempts_used"], 2);

    // With no input at all it fails with `internal`, retryable by the catalogue.
    let id = server.submit(json!({"kind": "fail", "max_attempts": 1})).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(job["error"]["type"], "internal");
    assert_eq!(job["error"]["retryable"], true);
    assert_finished_attempts(&job, &["failed"]);
    server.stop().await;
}

/// A stand-in remote on 127.0.0.1:0 that counts the requests each route gets.
struct StandIn {
    base: String,
    hits: Arc<Mutex<HashMap<&'static str, usize>>>,
}

impl StandIn {
    async fn start() -> StandIn {
        let hits: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
        let count = |route: &'static str| {
            let hits = hits.clone();
            move || *hits.lock().unwrap().entry(route).or_default() += 1
        };
        let (ok, boom, missing, slow, echo) =
            (count("/ok"), count("/boom"), count("/missing"), count("/slow-down"), count("/echo"));
        let app = axum::Router::new()
            .route(
                "/ok",
                get(move || {
                    ok();
                    async { Json(json!({"hello": "world", "n": 7})) }
                }),
            )
            .route(
                "/boom",
                get(move || {
                    boom();
                    async { (StatusCode::INTERNAL_SERVER_ERROR, "the stand-in broke") }
                }),
            )
            .route(
                "/missing",
                get(move || {
                    missing();
                    async { (StatusCode::NOT_FOUND, "no such thing") }
                }),
            )
            .route(
                "/slow-down",
                get(move || {
                    slow();
                    async { (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "0")], "slow down") }
                }),
            )
            .route(
                "/echo",
                post(move |headers: HeaderMap, Json(body): Json<Value>| {
                    echo();
                    let x = headers.get("x-test").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    async move { Json(json!({"x_test": x, "body": body})) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The stand-in answers before any job is sent to it.
        assert!(client().get(format!("{base}/ok")).send().await.unwrap().status().is_success());
        hits.lock().unwrap().clear();
        StandIn { base, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self, route: &str) -> usize {
        self.hits.lock().unwrap().get(route).copied().unwrap_or(0)
    }
}

async fn http_success_keeps_the_response(backend: Backend) {
    let remote = StandIn::start().await;
    let server = TestServer::start(backend).await;

    let id = server.submit(json!({"kind": "http", "input": {"url": remote.url("/ok")}})).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"]["status"], 200);
    assert_eq!(job["output"]["body"], json!({"hello": "world", "n": 7}), "a JSON body is parsed");
    assert_eq!(job["output"]["truncated"], false);
    assert!(job["output"]["headers"]["content-type"].as_str().unwrap().contains("json"), "{job}");
    assert_finished_attempts(&job, &["succeeded"]);
    assert_eq!(remote.hits("/ok"), 1);

    // Method, headers and a JSON body reach the remote.
    let id = server
        .submit(json!({"kind": "http", "input": {
            "method": "post", "url": remote.url("/echo"), "headers": {"x-test": "yes"}, "body": {"k": [1, 2]}
        }}))
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"]["body"], json!({"x_test": "yes", "body": {"k": [1, 2]}}));
    assert_eq!(remote.hits("/echo"), 1);

    // A response over max_response_bytes is cut and kept as text.
    let id = server.submit(json!({"kind": "http", "input": {"url": remote.url("/ok"), "max_response_bytes": 5}})).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"]["truncated"], true, "{job}");
    assert_eq!(job["output"]["body"], r#"{"hel"#, "{job}");
    server.stop().await;
}

async fn http_failures_are_classified(backend: Backend) {
    let remote = StandIn::start().await;
    let server = TestServer::start(backend).await;
    let tiny = json!({"initial_ms": 5, "max_ms": 5, "multiplier": 1.0, "jitter": "none"});

    // 5xx: http_status, retryable, so retried until attempts run out; the response is kept.
    let boom = server
        .submit(json!({"kind": "http", "input": {"url": remote.url("/boom")}, "max_attempts": 2, "backoff": tiny}))
        .await;
    // Other 4xx: http_status, not retryable: dead after one attempt despite attempts left.
    let missing = server
        .submit(json!({"kind": "http", "input": {"url": remote.url("/missing")}, "max_attempts": 3, "backoff": tiny}))
        .await;
    // 429: rate_limited, retryable, and `Retry-After: 0` replaces a one-minute backoff (a
    // backoff honoured instead would outlast the wait below).
    let slow = server
        .submit(json!({
            "kind": "http",
            "input": {"url": remote.url("/slow-down")},
            "max_attempts": 2,
            "backoff": {"initial_ms": 60000, "max_ms": 60000, "jitter": "none"}
        }))
        .await;
    // Connection refused: network, retryable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr
    };
    let refused =
        server.submit(json!({"kind": "http", "input": {"url": format!("http://{closed}/x")}, "max_attempts": 1})).await;

    let job = server.wait_state(&boom, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_finished_attempts(&job, &["failed", "failed"]);
    assert_eq!(job["error"]["type"], "http_status");
    assert_eq!(job["error"]["retryable"], true);
    assert_eq!(job["output"]["status"], 500, "a failed request keeps the response: {job}");
    assert_eq!(job["output"]["body"], "the stand-in broke");
    assert_eq!(remote.hits("/boom"), 2);

    let job = server.wait_state(&missing, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_finished_attempts(&job, &["failed"]);
    assert_eq!(job["error"]["type"], "http_status");
    assert_eq!(job["error"]["retryable"], false);
    assert_eq!(job["output"]["status"], 404);
    assert_eq!(remote.hits("/missing"), 1);

    let job = server.wait_state(&slow, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_finished_attempts(&job, &["failed", "failed"]);
    assert_eq!(job["error"]["type"], "rate_limited");
    assert_eq!(job["error"]["retryable"], true);
    assert_eq!(attempts(&job)[0]["error"]["type"], "rate_limited");
    assert_eq!(job["output"]["status"], 429);
    assert_eq!(remote.hits("/slow-down"), 2);

    let job = server.wait_state(&refused, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_finished_attempts(&job, &["failed"]);
    assert_eq!(job["error"]["type"], "network");
    assert_eq!(job["error"]["retryable"], true);
    server.stop().await;
}

async fn output_over_the_limit_fails_with_resource_limit(backend: Backend) {
    // An output past the inline limit is kept as a blob up to `blobs.max_bytes` (see
    // `blobs.rs`): with all three at 100, 100 bytes is the most any output may be.
    let server = TestServer::start_with(backend, |cfg| {
        cfg.limits.max_output_bytes = 100;
        cfg.blobs.claim_check_bytes = 100;
        cfg.blobs.max_bytes = 100;
    })
    .await;
    // A JSON string of n characters serializes to n + 2 bytes.
    let at_limit = server.submit(json!({"kind": "noop", "input": "a".repeat(98)})).await;
    // An output larger than its input: a blob read back as `{"text": "…"}`, 11 bytes more
    // than its text (put straight into the store).
    let blobs = ferry_store::Blobs::new(server.store.blobs(), ferry_store::BlobsConfig::default());
    let blob = blobs.put("default", ferry_store::Media::Text, vec![b'a'; 90]).await.expect("stored");
    let over = server.submit(json!({"kind": "blob_get", "input": {"hash": blob.hash}, "max_attempts": 3})).await;

    let job = server.wait_state(&at_limit, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "an output exactly at the limit is kept: {job:#}");
    assert_eq!(job["output"], json!("a".repeat(98)));

    let job = server.wait_state(&over, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(job["error"]["type"], "resource_limit");
    assert_eq!(job["error"]["retryable"], false);
    assert_finished_attempts(&job, &["failed"]);
    assert_eq!(job["output"], Value::Null, "the oversized output is not stored");
    server.stop().await;
}
