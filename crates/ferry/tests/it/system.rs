//! Promise: the service describes and reports itself — an OpenAPI document listing every
//! endpoint, health and readiness probes, Prometheus metrics and per-queue counts.

use crate::harness::{Backend, DEADLINE, TestServer, both};
use ferry::config::QueueSettings;
use reqwest::StatusCode;
use serde_json::json;

both!(
    openapi_lists_every_endpoint,
    health_readiness_and_metrics,
    queue_counts_reflect_jobs,
    an_idle_queue_leases_a_job_in_its_submission
);

async fn openapi_lists_every_endpoint(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, doc) = server.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let expected: [(&str, &[&str]); 38] = [
        ("/v1/jobs", &["get", "post"]),
        ("/v1/jobs/batch", &["post"]),
        ("/v1/jobs/{id}", &["get", "delete"]),
        ("/v1/jobs/{id}/cancel", &["post"]),
        ("/v1/jobs/{id}/replay", &["post"]),
        ("/v1/jobs/{id}/events", &["get"]),
        ("/v1/errors", &["get"]),
        ("/v1/queues", &["get"]),
        ("/v1/workers", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/workflows", &["get", "post"]),
        ("/v1/workflows/{name}", &["get"]),
        ("/v1/runs", &["get", "post"]),
        ("/v1/runs/{id}", &["get"]),
        ("/v1/runs/{id}/cancel", &["post"]),
        ("/v1/runs/{id}/events", &["get"]),
        ("/v1/tokens", &["get", "post"]),
        ("/v1/tokens/{id}", &["delete"]),
        ("/v1/limits", &["get", "put"]),
        ("/v1/limits/rates", &["get"]),
        ("/v1/limits/rates/{label}", &["put", "delete"]),
        ("/v1/queues/{name}", &["put"]),
        ("/v1/breakers", &["get"]),
        ("/v1/breakers/{key}", &["get", "put"]),
        ("/v1/blobs/{hash}", &["get"]),
        ("/v1/schedules", &["get", "post"]),
        ("/v1/schedules/{id}", &["get", "delete"]),
        ("/v1/schedules/{id}/pause", &["post"]),
        ("/v1/schedules/{id}/resume", &["post"]),
        ("/v1/workers/sessions", &["get", "post"]),
        ("/v1/workers/sessions/{session}", &["delete"]),
        ("/v1/workers/sessions/{session}/lease", &["post"]),
        ("/v1/workers/sessions/{session}/heartbeat", &["post"]),
        ("/v1/workers/sessions/{session}/events", &["post"]),
        ("/v1/workers/sessions/{session}/complete", &["post"]),
    ];
    for (path, methods) in expected {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} is missing; paths: {:?}", paths.keys()));
        for m in methods {
            assert!(item.get(*m).is_some(), "{path} has no {m}: {item}");
        }
    }
    assert_eq!(paths.len(), expected.len(), "undocumented extra paths: {:?}", paths.keys());
    assert!(doc["components"]["schemas"]["JobSpec"].is_object(), "the job spec schema is described");
    server.stop().await;
}

async fn health_readiness_and_metrics(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["status"], &body["store"]), (&json!("ready"), &json!(backend.name())), "{body}");
    assert_eq!(body["details"]["exec"]["accepting"], true, "the sandbox is complete on this host: {body}");

    let ok = server.submit(json!({"kind": "noop"})).await;
    let dead = server.submit(json!({"kind": "fail", "input": {"retryable": false}})).await;
    server.wait_state(&ok, &["succeeded"]).await;
    server.wait_state(&dead, &["dead"]).await;

    // The engine counts a finished job just after the store recorded it: poll.
    let names = [
        "ferry_jobs_finished_total",
        "ferry_attempt_duration_seconds",
        "ferry_pickup_wait_seconds",
        "ferry_queue_depth",
        "ferry_jobs_running",
    ];
    let missing = |text: &str| -> Vec<String> {
        let mut missing: Vec<String> =
            names.iter().filter(|n| !text.lines().any(|l| l.starts_with(**n))).map(|n| n.to_string()).collect();
        for state in ["succeeded", "dead"] {
            let counted = text.lines().any(|l| {
                l.starts_with("ferry_jobs_finished_total{")
                    && l.contains(&format!("state=\"{state}\""))
                    && l.contains("queue=\"default\"")
            });
            if !counted {
                missing.push(format!("ferry_jobs_finished_total{{state=\"{state}\"}}"));
            }
        }
        if !text.lines().any(|l| l.starts_with("ferry_queue_depth{") && l.contains("queue=\"default\"")) {
            missing.push("ferry_queue_depth{queue=\"default\"}".into());
        }
        missing
    };
    let started = std::time::Instant::now();
    loop {
        let (status, text) = server.get_text("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let gone = missing(&text);
        if gone.is_empty() {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{gone:?} missing from:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn queue_counts_reflect_jobs(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.insert("other".into(), QueueSettings { concurrency: Some(0), max_depth: None, severity: None });
    })
    .await;
    let dead = server.submit(json!({"kind": "fail", "input": {"retryable": false}})).await;
    server.wait_state(&dead, &["dead"]).await;
    server.submit(json!({"kind": "noop", "delay_ms": 600000})).await;
    server
        .submit_batch(vec![json!({"kind": "noop", "queue": "other"}), json!({"kind": "noop", "queue": "other"})])
        .await;

    let (status, body) = server.get("/v1/queues").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let queues = body["queues"].as_array().expect("queues");
    let find = |name: &str| queues.iter().find(|q| q["name"] == name).unwrap_or_else(|| panic!("{name} in {body}"));
    assert_eq!(
        find("default"),
        &json!({"name": "default", "depth": 0, "running": 0, "scheduled": 1, "retrying": 0, "dead": 1})
    );
    assert_eq!(
        find("other"),
        &json!({"name": "other", "depth": 2, "running": 0, "scheduled": 0, "retrying": 0, "dead": 0})
    );
    for name in ["heavy", "webhook", "llm", "runs"] {
        assert_eq!(
            find(name),
            &json!({"name": name, "depth": 0, "running": 0, "scheduled": 0, "retrying": 0, "dead": 0}),
            "configured out of the box"
        );
    }
    assert_eq!(queues.len(), 6, "{body}");
    server.stop().await;
}

async fn an_idle_queue_leases_a_job_in_its_submission(backend: Backend) {
    // Its own queue, so that the counter is this test's alone in the shared registry.
    let queue = format!("idle-{}", backend.name());
    let q = queue.clone();
    let server = TestServer::start_with(backend, move |cfg| {
        cfg.queues.insert(q, QueueSettings { concurrency: Some(4), max_depth: None, severity: None });
    })
    .await;
    let parked = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("ferry_parked_claims_total{") && l.contains(&format!("queue=\"{queue}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // Once its dispatcher found the queue empty it parks a claim, and the next submission
    // leases its job itself: one of a few jobs submitted one after another must be.
    for n in 1.. {
        let id = server.submit(json!({"kind": "noop", "queue": queue})).await;
        server.wait_state(&id, &["succeeded"]).await;
        let (_, text) = server.get_text("/metrics").await;
        if parked(&text) >= 1.0 {
            break;
        }
        assert!(n < 50, "none of {n} jobs was leased by a parked claim:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
