//! Promise: the OpenAPI document describes this very server (its limits, kinds, queues and
//! whether it needs a token now), and the server accepts what the document calls valid:
//! a whole-number float is an integer, and a nested object is never read from an array.
//! (The whole document against the server: `tests/contract.rs`.)

use crate::harness::{Backend, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    the_document_says_when_a_token_is_needed,
    the_document_states_this_servers_limits,
    whole_number_floats_are_integers,
    nested_objects_are_never_read_from_arrays,
    every_queue_setting_may_be_null,
);

async fn put(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = server.client().put(format!("{}{path}", server.url())).json(&body).send().await.expect("an answer");
    let status = resp.status();
    (status, resp.json().await.expect("a JSON answer"))
}

async fn the_document_says_when_a_token_is_needed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], json!("bearer"), "{doc}");
    let security = |doc: &Value, path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(security(&doc, "/v1/jobs", "post"), json!([{"bearer": []}, {}]), "open mode: the token is optional");
    assert_eq!(security(&doc, "/healthz", "get"), json!([]), "probes never need one");
    assert_eq!(
        doc["paths"]["/v1/jobs/{id}"]["get"]["responses"]["401"]["$ref"],
        json!("#/components/responses/Unauthenticated")
    );

    let (status, body) = server.post("/v1/tokens", json!({"user": "ann", "role": "admin"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "the document needs no token: {doc}");
    assert_eq!(security(&doc, "/v1/jobs", "post"), json!([{"bearer": []}]), "a token exists: it is required");
    assert_eq!(security(&doc, "/v1/openapi.json", "get"), json!([]));
    server.stop().await;
}

async fn the_document_states_this_servers_limits(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.limits.max_attempts = 7;
        cfg.limits.max_timeout_ms = 90_000;
    })
    .await;
    let (_, doc) = server.get("/v1/openapi.json").await;
    let spec = &doc["components"]["schemas"]["JobSpec"]["properties"];
    assert_eq!(spec["max_attempts"]["maximum"], json!(7), "{}", spec["max_attempts"]);
    assert_eq!(spec["max_attempts"]["minimum"], json!(1), "{}", spec["max_attempts"]);
    assert_eq!(spec["timeout_ms"]["maximum"], json!(90_000), "{}", spec["timeout_ms"]);
    let kinds: Vec<&str> = spec["kind"]["enum"].as_array().expect("kinds").iter().filter_map(Value::as_str).collect();
    for kind in ["noop", "sleep", "fail", "http", "webhook", "llm", "workflow"] {
        assert!(kinds.contains(&kind), "{kind} is registered: {kinds:?}");
    }
    let queues = spec["queue"]["enum"].as_array().expect("queues");
    assert!(queues.contains(&json!("default")) && queues.contains(&Value::Null), "{queues:?}");

    // The edges the document states are the server's.
    let (status, body) = server.post("/v1/jobs", json!({"kind": "noop", "max_attempts": 7})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let got = server.post("/v1/jobs", json!({"kind": "noop", "max_attempts": 8})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("max_attempts"));
    server.stop().await;
}

async fn whole_number_floats_are_integers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let spec = json!({"kind": "noop", "max_attempts": 2.0, "priority": -3.0, "delay_ms": 6.0e7, "input": {"x": 1.0}});
    let id = server.submit(spec).await;
    let job = server.job(&id).await;
    assert_eq!(job["max_attempts"], json!(2), "{job}");
    assert_eq!(job["priority"], json!(-3), "{job}");
    assert_eq!(job["state"], json!("scheduled"), "{job}");
    assert!(job["input"]["x"].is_f64(), "the input is passed on as sent: {job}");

    let got = server.post("/v1/jobs", json!({"kind": "noop", "max_attempts": 2.5})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("max_attempts"));

    let (status, body) = put(&server, "/v1/queues/default", json!({"concurrency": 3.0, "max_depth": 1e3})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["concurrency"].clone(), body["max_depth"].clone()), (json!(3), json!(1000)), "{body}");
    let (status, body) = put(&server, "/v1/limits", json!({"per_user": {"jobs": 40.0}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["per_user"]["jobs"], json!(40), "{body}");
    server.stop().await;
}

async fn nested_objects_are_never_read_from_arrays(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, before) = server.get("/v1/limits").await;
    // Serde's derive would read `{"runs", "jobs"}` from `[runs, jobs]`.
    let cases = [
        (json!({"users": {"ann": [1, 2]}}), "users.ann"),
        (json!({"per_user": [1, 2]}), "per_user"),
        (json!({"per_workspace": [null, null]}), "per_workspace"),
    ];
    for (body, field) in cases {
        let got = put(&server, "/v1/limits", body.clone()).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some(field));
    }
    let (_, after) = server.get("/v1/limits").await;
    assert_eq!(before, after, "a refused request changes nothing");

    let workflow = json!({"name": "w", "nodes": [{"id": "a", "kind": "noop", "backoff": [10, 20, 2.0, "none"]}]});
    let got = server.post("/v1/workflows", workflow).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("nodes[0].backoff"));
    server.stop().await;
}

async fn every_queue_setting_may_be_null(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, doc) = server.get("/v1/openapi.json").await;
    let request = &doc["components"]["schemas"]["QueueSettingsRequest"];
    for field in ["concurrency", "max_depth", "rate", "paused"] {
        let types = &request["properties"][field]["type"];
        assert!(types.as_array().is_some_and(|t| t.contains(&json!("null"))), "{field} may be null: {request}");
    }
    assert!(request.get("required").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)), "{request}");
    // The server agrees: null is accepted for each.
    let body = json!({"concurrency": null, "max_depth": null, "rate": null, "paused": null});
    let (status, answer) = put(&server, "/v1/queues/default", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    server.stop().await;
}
