//! Promise: bad input is refused at the door with a clear 4xx naming the code and the
//! field at fault, limits are exact at their edge, and a refused request stores nothing.

use crate::harness::{Backend, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    malformed_and_mistyped_bodies_are_refused,
    missing_required_field_is_named,
    a_body_that_is_not_an_object_is_refused,
    body_limit_is_exact,
    input_limit_is_exact,
    batch_limits_and_all_or_nothing,
    unknown_paths_and_ids
);

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const TOO_LARGE: StatusCode = StatusCode::PAYLOAD_TOO_LARGE;

/// A valid job spec serialized to exactly `len` bytes (padding its input).
fn spec_of_len(len: usize) -> Vec<u8> {
    let empty = json!({"kind": "noop", "input": ""}).to_string().len();
    let body = json!({"kind": "noop", "input": "x".repeat(len - empty)}).to_string().into_bytes();
    assert_eq!(body.len(), len);
    body
}

async fn malformed_and_mistyped_bodies_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let raw_cases: [(&str, &str); 4] = [
        (r#"{"kind": "noop""#, "malformed_json"),
        ("not json", "malformed_json"),
        (r#"{"kind": "noop"} {"kind": "noop"}"#, "malformed_json"),
        ("", "malformed_json"),
    ];
    for (body, code) in raw_cases {
        let got = server.post_raw("/v1/jobs", body, "application/json").await;
        assert_error(&got, BAD, code, None);
    }
    // The body is JSON whatever the content type says.
    let got = server.post_raw("/v1/jobs", "{", "application/x-www-form-urlencoded").await;
    assert_error(&got, BAD, "malformed_json", None);

    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"kind": "nope"}), "unknown_kind", "kind"),
        (json!({"kind": "noop", "queue": "nope"}), "unknown_queue", "queue"),
        (json!({"kind": 5}), "invalid_field", "kind"),
        (json!({"kind": "noop", "priority": "high"}), "invalid_field", "priority"),
        (json!({"kind": "noop", "priority": 1.5}), "invalid_field", "priority"),
        (json!({"kind": "noop", "max_attempts": -1}), "invalid_field", "max_attempts"),
        (json!({"kind": "noop", "max_attempts": 0}), "invalid_field", "max_attempts"),
        (json!({"kind": "noop", "max_attempts": 101}), "invalid_field", "max_attempts"),
        (json!({"kind": "noop", "timeout_ms": 0}), "invalid_field", "timeout_ms"),
        (json!({"kind": "noop", "timeout_ms": "soon"}), "invalid_field", "timeout_ms"),
        (json!({"kind": "noop", "total_timeout_ms": 0}), "invalid_field", "total_timeout_ms"),
        (json!({"kind": "noop", "delay_ms": -5}), "invalid_field", "delay_ms"),
        (json!({"kind": "noop", "run_at": "tomorrow"}), "invalid_field", "run_at"),
        (json!({"kind": "noop", "backoff": {"jitter": "some"}}), "invalid_field", "backoff.jitter"),
        (json!({"kind": "noop", "backoff": {"initial_ms": "1s"}}), "invalid_field", "backoff.initial_ms"),
        (json!({"kind": "noop", "backoff": {"multiplier": 0.5}}), "invalid_field", "backoff.multiplier"),
        (json!({"kind": "noop", "backoff": {"initial_ms": 10, "max_ms": 5}}), "invalid_field", "backoff.max_ms"),
        (json!({"kind": "noop", "labels": {"team": 5}}), "invalid_field", "labels.team"),
        (json!({"kind": "noop", "labels": {"a b": "x"}}), "invalid_field", "labels.a b"),
        (json!({"kind": "noop", "idempotency_key": 7}), "invalid_field", "idempotency_key"),
        (json!({"kind": "noop", "idempotency_key": ""}), "invalid_field", "idempotency_key"),
        (json!({"kind": "noop", "bogus": 1}), "invalid_field", "bogus"),
        (json!({"kind": "noop", "backoff": {"initial_ms": 1, "bogus": 2}}), "invalid_field", "backoff.bogus"),
        (json!({"kind": "sleep"}), "invalid_field", "input"),
        (json!({"kind": "sleep", "input": {}}), "invalid_field", "input.ms"),
        (json!({"kind": "sleep", "input": {"ms": "x"}}), "invalid_field", "input.ms"),
        (json!({"kind": "sleep", "input": {"ms": -1}}), "invalid_field", "input.ms"),
        (json!({"kind": "http", "input": {"method": "GET"}}), "invalid_field", "input.url"),
        (json!({"kind": "http", "input": {"url": "ftp://example.com/x"}}), "invalid_field", "input.url"),
        (json!({"kind": "http", "input": {"url": "http://x", "method": "BREW"}}), "invalid_field", "input.method"),
        (
            json!({"kind": "http", "input": {"url": "http://x", "headers": {"a": 1}}}),
            "invalid_field",
            "input.headers.a",
        ),
        (json!({"kind": "fail", "input": {"type": "gremlins"}}), "invalid_field", "input.type"),
        (json!({"kind": "fail", "input": {"times": "twice"}}), "invalid_field", "input.times"),
        (json!({"kind": "fail", "input": {"retryable": "yes"}}), "invalid_field", "input.retryable"),
    ];
    for (body, code, field) in cases {
        let got = server.post("/v1/jobs", body.clone()).await;
        assert_error(&got, BAD, code, Some(field));
    }
    assert_eq!(server.count_jobs().await, 0, "a refused request stores nothing");
    server.stop().await;
}

async fn missing_required_field_is_named(backend: Backend) {
    let server = TestServer::start(backend).await;
    let cases = [
        ("/v1/jobs", json!({}), "kind"),
        ("/v1/jobs", json!({"input": {"a": 1}}), "kind"),
        ("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, {"input": {}}]}), "jobs[1].kind"),
        ("/v1/jobs/batch", json!({}), "jobs"),
    ];
    let mut wrong = Vec::new();
    for (path, body, field) in cases {
        let (status, answer) = server.post(path, body.clone()).await;
        let err = &answer["error"];
        if status != BAD || err["code"] != "invalid_field" || err["field"] != field {
            wrong.push(format!("POST {path} {body} -> {status} {answer}; expected invalid_field on `{field}`"));
        }
    }
    assert!(wrong.is_empty(), "a missing required field is not named:\n{}", wrong.join("\n"));
    assert_eq!(server.count_jobs().await, 0, "a refused request stores nothing");
    server.stop().await;
}

async fn a_body_that_is_not_an_object_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    // A job spec and a batch are JSON objects. Serde's derive would also read a struct
    // from a positional array (`["sleep", {"ms": 1}, "default", 7]` = kind, input, queue,
    // priority), which bypasses the field names the API documents and checks.
    let cases = [
        ("/v1/jobs", json!("noop")),
        ("/v1/jobs", json!(42)),
        ("/v1/jobs", json!(null)),
        ("/v1/jobs", json!([])),
        ("/v1/jobs", json!(["noop"])),
        ("/v1/jobs", json!(["sleep", {"ms": 1}, "default", 7])),
        ("/v1/jobs", json!({"kind": "noop", "backoff": [10, 20, 2.0, "none"]})),
        ("/v1/jobs/batch", json!([[{"kind": "noop"}]])),
        ("/v1/jobs/batch", json!({"jobs": [["noop"]]})),
    ];
    let mut accepted = Vec::new();
    for (path, body) in cases {
        let (status, answer) = server.post(path, body.clone()).await;
        if status != BAD || !answer["error"]["code"].is_string() {
            accepted.push(format!("POST {path} {body} -> {status} {answer}"));
        }
    }
    assert!(accepted.is_empty(), "non-object bodies were not refused:\n{}", accepted.join("\n"));
    assert_eq!(server.count_jobs().await, 0, "a refused request stores nothing");
    server.stop().await;
}

async fn body_limit_is_exact(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| cfg.limits.max_body_bytes = 4096).await;

    let (status, body) = server.post_raw("/v1/jobs", spec_of_len(4096), "application/json").await;
    assert_eq!(status, StatusCode::CREATED, "a body exactly at the limit is accepted: {body}");
    assert_eq!(server.count_jobs().await, 1);

    for len in [4097, 5000] {
        let got = server.post_raw("/v1/jobs", spec_of_len(len), "application/json").await;
        assert_error(&got, TOO_LARGE, "payload_too_large", None);
    }
    let batch = json!({"jobs": [{"kind": "noop", "input": "y".repeat(5000)}]}).to_string();
    let got = server.post_raw("/v1/jobs/batch", batch, "application/json").await;
    assert_error(&got, TOO_LARGE, "payload_too_large", None);
    assert_eq!(server.count_jobs().await, 1, "a refused request stores nothing");
    server.stop().await;
}

async fn input_limit_is_exact(backend: Backend) {
    // An input past the inline limit is kept as a blob up to `blobs.max_bytes` (see
    // `blobs.rs`): with all three at 64, 64 bytes is the most any input may be.
    let server = TestServer::start_with(backend, |cfg| {
        cfg.limits.max_input_bytes = 64;
        cfg.blobs.claim_check_bytes = 64;
        cfg.blobs.max_bytes = 64;
    })
    .await;
    // A JSON string of n characters serializes to n + 2 bytes.
    let at_limit = json!("a".repeat(62));
    let over = json!("a".repeat(63));

    let id = server.submit(json!({"kind": "noop", "input": at_limit})).await;
    let got = server.post("/v1/jobs", json!({"kind": "noop", "input": over})).await;
    assert_error(&got, TOO_LARGE, "payload_too_large", Some("input"));
    let got = server
        .post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, {"kind": "noop", "input": {"k": "a".repeat(64)}}]}))
        .await;
    assert_error(&got, TOO_LARGE, "payload_too_large", Some("jobs[1].input"));

    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["output"], at_limit);
    assert_eq!(server.count_jobs().await, 1, "a refused request stores nothing");
    server.stop().await;
}

async fn batch_limits_and_all_or_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let delayed = |i: usize| json!({"kind": "noop", "input": {"i": i}, "delay_ms": 600000});

    let got = server.post("/v1/jobs/batch", json!({"jobs": []})).await;
    assert_error(&got, BAD, "invalid_field", Some("jobs"));
    let got = server.post("/v1/jobs/batch", json!({"jobs": (0..1001).map(delayed).collect::<Vec<_>>()})).await;
    assert_error(&got, BAD, "batch_too_large", Some("jobs"));

    let mut jobs: Vec<Value> = (0..5).map(delayed).collect();
    jobs[3] = json!({"kind": "nope"});
    let got = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_error(&got, BAD, "unknown_kind", Some("jobs[3].kind"));

    let mut jobs: Vec<Value> = (0..5).map(delayed).collect();
    jobs[2] = json!({"kind": "noop", "priority": "high"});
    let got = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_error(&got, BAD, "invalid_field", Some("jobs[2].priority"));

    let mut jobs: Vec<Value> = (0..5).map(delayed).collect();
    jobs[1] = json!({"kind": "sleep", "input": {}});
    let got = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_error(&got, BAD, "invalid_field", Some("jobs[1].input.ms"));

    let mut jobs: Vec<Value> = (0..5).map(delayed).collect();
    jobs[4] = json!({"kind": "noop", "queue": "elsewhere"});
    let got = server.post("/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_error(&got, BAD, "unknown_queue", Some("jobs[4].queue"));

    let got = server.post("/v1/jobs/batch", json!({"jobs": [delayed(0)], "extra": true})).await;
    assert_error(&got, BAD, "invalid_field", Some("extra"));
    assert_eq!(server.count_jobs().await, 0, "a refused batch stores nothing");

    let (status, body) =
        server.post("/v1/jobs/batch", json!({"jobs": (0..1000).map(delayed).collect::<Vec<_>>()})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let accepted = body["jobs"].as_array().unwrap();
    assert_eq!(accepted.len(), 1000);
    assert!(accepted.iter().all(|j| j["created"] == true && j["state"] == "scheduled"), "{body}");
    // Answered in the order given: the i-th answer is the job with input i.
    for i in [0, 1, 499, 999] {
        let job = server.job(accepted[i]["id"].as_str().unwrap()).await;
        assert_eq!(job["input"], json!({"i": i}));
    }
    let all = server.all_jobs().await;
    assert_eq!(all.len(), 1000);
    let distinct: std::collections::HashSet<&str> = all.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 1000);
    server.stop().await;
}

async fn unknown_paths_and_ids(backend: Backend) {
    let server = TestServer::start(backend).await;
    let got = server.get("/v1/nothing-here").await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", None);
    let got = server.get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", None);
    let got = server.get("/v1/jobs/42").await;
    assert_error(&got, BAD, "invalid_field", Some("id"));
    let got = server.get(&format!("/v1/jobs/{}/events", uuid::Uuid::now_v7())).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", None);
    server.stop().await;
}
