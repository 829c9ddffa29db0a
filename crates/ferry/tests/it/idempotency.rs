//! Promise: an idempotency key (body field or `Idempotency-Key` header) makes submission
//! exactly-once: the same request again answers the same job, another request with the
//! key is refused.

use crate::harness::{Backend, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

both!(concurrent_identical_submits_create_one_job, header_form_of_the_key, batch_conflict_stores_nothing);

async fn concurrent_identical_submits_create_one_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let spec = json!({"kind": "noop", "input": {"n": 1}, "idempotency_key": "order-42"});
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let req = server.client().post(format!("{}/v1/jobs", server.url())).json(&spec);
        tasks.spawn(async move {
            let resp = req.send().await.expect("the server answers");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("a JSON answer"))
        });
    }
    let answers = tasks.join_all().await;
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    let matched = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, matched), (1, 49), "{answers:?}");
    for (status, body) in &answers {
        assert_eq!(body["created"], json!(*status == StatusCode::CREATED), "{body}");
    }
    let ids: HashSet<&str> = answers.iter().map(|(_, b)| b["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap().to_string();

    let jobs = server.all_jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0]["id"], json!(id));
    assert_eq!(jobs[0]["idempotency_key"], "order-42");

    // After it ran, the same request still answers the same job, as it is now.
    server.wait_state(&id, &["succeeded"]).await;
    let (status, body) = server.post("/v1/jobs", spec.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": id, "state": "succeeded", "created": false}));

    // The same key with another request is a conflict and stores nothing.
    let other = json!({"kind": "noop", "input": {"n": 2}, "idempotency_key": "order-42"});
    let got = server.post("/v1/jobs", other).await;
    assert_error(&got, StatusCode::CONFLICT, "idempotency_conflict", Some("idempotency_key"));
    let got = server
        .post("/v1/jobs", json!({"kind": "noop", "input": {"n": 1}, "priority": 1, "idempotency_key": "order-42"}))
        .await;
    assert_error(&got, StatusCode::CONFLICT, "idempotency_conflict", Some("idempotency_key"));
    assert_eq!(server.count_jobs().await, 1);
    server.stop().await;
}

async fn header_form_of_the_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let spec = json!({"kind": "noop", "delay_ms": 60000});
    let key = [("Idempotency-Key", "hdr-1")];
    let (status, first) = server.post_with("/v1/jobs", spec.clone(), &key).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["id"].clone();
    assert_eq!(server.job(id.as_str().unwrap()).await["idempotency_key"], "hdr-1");

    let (status, again) = server.post_with("/v1/jobs", spec.clone(), &key).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id);
    assert_eq!(again["created"], false);

    // Header and body agreeing is the same request as either alone.
    let mut keyed = spec.clone();
    keyed["idempotency_key"] = json!("hdr-1");
    let (status, same) = server.post_with("/v1/jobs", keyed.clone(), &key).await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["id"], id);
    let (status, body_only) = server.post("/v1/jobs", keyed).await;
    assert_eq!(status, StatusCode::OK, "{body_only}");
    assert_eq!(body_only["id"], id);

    // Header and body disagreeing is refused.
    let mut other = spec.clone();
    other["idempotency_key"] = json!("hdr-2");
    let got = server.post_with("/v1/jobs", other, &key).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("idempotency_key"));

    // Key order inside the spec does not make it another request.
    let a = r#"{"kind": "noop", "input": {"a": 1, "b": [1, 2]}, "idempotency_key": "order"}"#;
    let b = r#"{"idempotency_key": "order", "input": {"b": [1, 2], "a": 1}, "kind": "noop"}"#;
    let (status, first) = server.post_raw("/v1/jobs", a, "application/json").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, second) = server.post_raw("/v1/jobs", b, "application/json").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["id"], first["id"]);

    // The header with another spec is a conflict.
    let got = server.post_with("/v1/jobs", json!({"kind": "noop", "delay_ms": 50000}), &key).await;
    assert_error(&got, StatusCode::CONFLICT, "idempotency_conflict", Some("idempotency_key"));
    assert_eq!(server.count_jobs().await, 2);
    server.stop().await;
}

async fn batch_conflict_stores_nothing(backend: Backend) {
    batch_conflict_stores_nothing_on(TestServer::start(backend).await).await;
    // A node without workers has no idle claim parked on the queue, so on PostgreSQL its
    // submissions take the autocommit path, which a batch with keys must not take.
    batch_conflict_stores_nothing_on(TestServer::start_with(backend, |c| c.workers = 0).await).await;
}

async fn batch_conflict_stores_nothing_on(server: TestServer) {
    server.submit(json!({"kind": "noop", "delay_ms": 60000, "idempotency_key": "dup"})).await;
    let got = server
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [
                {"kind": "noop", "delay_ms": 60000},
                {"kind": "noop", "delay_ms": 60000, "priority": 9, "idempotency_key": "dup"}
            ]}),
        )
        .await;
    assert_error(&got, StatusCode::CONFLICT, "idempotency_conflict", Some("jobs[1].idempotency_key"));
    assert_eq!(server.count_jobs().await, 1, "the batch's first job must not be stored");

    // A batch whose keys all match answers 200 with the existing job.
    let (status, body) = server
        .post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop", "delay_ms": 60000, "idempotency_key": "dup"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"][0]["created"], false);
    assert_eq!(server.count_jobs().await, 1);
    server.stop().await;
}
