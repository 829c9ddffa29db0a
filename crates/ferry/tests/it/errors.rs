//! Error severity and aggregation through the API: every failed attempt and the dead job
//! carry a severity (low while retried, medium from the 3rd attempt, high when dead,
//! critical on a queue configured so), `/metrics` counts failures by type and severity,
//! and `GET /v1/errors` groups a workspace's failures that differ only in numbers or ids,
//! with their count, first and last time and a sample job, filtered by queue, kind,
//! target and time, refusing a bad `since`, and showing a workspace only its own.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, poll, ts};
use ferry::config::QueueSettings;
use ferry_core::Severity;
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(severity_is_on_attempts_dead_jobs_and_metrics, errors_group_alike_failures_filtered_and_per_workspace);

fn fail(queue: &str, message: &str, max_attempts: u32, retryable: bool, error_type: &str) -> Value {
    json!({"kind": "fail", "queue": queue, "max_attempts": max_attempts,
           "backoff": {"initial_ms": 10, "max_ms": 10},
           "input": {"type": error_type, "retryable": retryable, "message": message}})
}

fn with_vital_queue(cfg: &mut ferry::config::Config) {
    let vital = QueueSettings { severity: Some(Severity::Critical), ..QueueSettings::default() };
    cfg.queues.insert("vital".into(), vital);
    cfg.queues.insert("other".into(), QueueSettings::default());
}

/// The value of `ferry_failures_total{type, severity}` in a scrape (0 when absent).
fn failures_total(text: &str, error_type: &str, severity: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("ferry_failures_total{"))
        .filter(|l| l.contains(&format!("type=\"{error_type}\"")) && l.contains(&format!("severity=\"{severity}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn severity_is_on_attempts_dead_jobs_and_metrics(backend: Backend) {
    let srv = TestServer::start_with(backend, with_vital_queue).await;
    // The recorder is the process's: other tests count too, so only increases are checked,
    // of series no other test writes (resource_limit as critical needs this queue).
    let (_, before) = srv.get_text("/metrics").await;
    let critical_before = failures_total(&before, "resource_limit", "critical");

    let id = srv.submit(fail("default", "down", 4, true, "network")).await;
    let job = srv.wait_state(&id, &["dead"]).await;
    let severities: Vec<&str> = attempts(&job).iter().map(|a| a["error"]["severity"].as_str().unwrap()).collect();
    assert_eq!(severities, ["low", "low", "medium", "high"], "{job:#}");
    assert_eq!(job["error"]["severity"], "high", "{job:#}");
    let failed: Vec<Value> = srv.events(&id).await.into_iter().filter(|e| e["type"] == "attempt_failed").collect();
    assert_eq!(failed.len(), 4);
    assert_eq!(failed[3]["data"]["error"]["severity"], "high", "the event carries it");

    // Dead at once on a critical queue: critical; internal errors never below medium.
    let vital = srv.submit(fail("vital", "too big", 3, false, "resource_limit")).await;
    let job = srv.wait_state(&vital, &["dead"]).await;
    assert_eq!((job["error"]["severity"].as_str(), attempts(&job).len()), (Some("critical"), 1), "{job:#}");
    let internal = srv.submit(fail("default", "bug", 2, true, "internal")).await;
    let job = srv.wait_state(&internal, &["dead"]).await;
    let severities: Vec<&str> = attempts(&job).iter().map(|a| a["error"]["severity"].as_str().unwrap()).collect();
    assert_eq!(severities, ["medium", "high"], "{job:#}");

    poll("ferry_failures_total to count the critical failure", async || {
        let (_, text) = srv.get_text("/metrics").await;
        let ok = failures_total(&text, "resource_limit", "critical") > critical_before
            && failures_total(&text, "network", "medium") >= 1.0
            && failures_total(&text, "network", "high") >= 1.0
            && failures_total(&text, "internal", "medium") >= 1.0;
        ok.then_some(())
    })
    .await;
    srv.stop().await;
}

async fn errors(srv: &TestServer, query: &str) -> Value {
    let (status, body) = srv.get(&format!("/v1/errors{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn errors_group_alike_failures_filtered_and_per_workspace(backend: Backend) {
    let srv = TestServer::start_with(backend, with_vital_queue).await;
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    // Three jobs whose messages differ only in their numbers (the kind adds the attempt's).
    let mut ids = Vec::new();
    for n in [7, 42, 9001] {
        ids.push(srv.submit(fail("default", &format!("order {n} failed"), 1, false, "network")).await);
    }
    let mut finished = Vec::new();
    for id in &ids {
        let job = srv.wait_state(id, &["dead"]).await;
        finished.push((ts(&attempts(&job)[0]["finished_at"]), id.clone()));
    }
    // Ends recorded in one batch share a time; the group's sample is then the newest job.
    finished.sort();
    let other = srv.submit(fail("other", "order 5 failed", 1, false, "network")).await;
    srv.wait_state(&other, &["dead"]).await;
    // An http job against a closed port: its target is the URL's origin.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let origin = format!("http://127.0.0.1:{port}");
    let http = srv.submit(json!({"kind": "http", "input": {"url": format!("{origin}/x")}, "max_attempts": 1})).await;
    srv.wait_state(&http, &["dead"]).await;

    let all = errors(&srv, "").await;
    assert_eq!((all["truncated"].as_bool(), all["total_groups"].as_u64()), (Some(false), Some(3)), "{all:#}");
    let g = &all["groups"][0];
    assert_eq!(g["count"], 3, "{all:#}");
    assert_eq!(g["message"], "order <n> failed (attempt <n>)");
    assert_eq!(
        (g["type"].as_str(), g["queue"].as_str(), g["kind"].as_str()),
        (Some("network"), Some("default"), Some("fail"))
    );
    assert_eq!((g["target"].clone(), g["severity"].as_str()), (Value::Null, Some("high")));
    assert_eq!(ts(&g["first_seen"]), finished[0].0);
    assert_eq!(ts(&g["last_seen"]), finished[2].0);
    assert_eq!(g["sample_job_id"].as_str(), Some(finished[2].1.as_str()), "the newest failure's job");

    let q = errors(&srv, "?queue=other").await;
    assert_eq!(
        (q["groups"].as_array().unwrap().len(), q["groups"][0]["sample_job_id"].as_str()),
        (1, Some(other.as_str()))
    );
    let k = errors(&srv, "?kind=http").await;
    assert_eq!(k["groups"].as_array().unwrap().len(), 1, "{k:#}");
    assert_eq!(k["groups"][0]["target"].as_str(), Some(origin.as_str()), "{k:#}");
    let t = errors(&srv, &format!("?target={}", origin.replace(':', "%3A").replace('/', "%2F"))).await;
    assert_eq!(t["groups"][0]["sample_job_id"].as_str(), Some(http.as_str()), "{t:#}");
    assert_eq!(t["groups"].as_array().unwrap().len(), 1);
    let since =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B");
    assert_eq!(errors(&srv, &format!("?since={}", since(start))).await["total_groups"], 3);
    let later = since(chrono::Utc::now() + chrono::Duration::seconds(60));
    assert_eq!(errors(&srv, &format!("?since={later}")).await["total_groups"], 0, "nothing since a later time");
    assert_eq!(errors(&srv, "?limit=1").await["groups"].as_array().unwrap().len(), 1);

    assert_error(&srv.get("/v1/errors?since=yesterday").await, StatusCode::BAD_REQUEST, "invalid_field", Some("since"));
    // Before the horizon: read from the horizon, and said so.
    let old = errors(&srv, "?since=1970-01-01T00:00:00Z").await;
    assert_eq!(old["total_groups"], 3, "{old:#}");
    assert!(ts(&old["since"]) > chrono::Utc::now() - chrono::Duration::days(366), "{}", old["since"]);
    assert_error(&srv.get("/v1/errors?limit=0").await, StatusCode::BAD_REQUEST, "invalid_field", Some("limit"));
    assert_error(&srv.get("/v1/errors?sort=count").await, StatusCode::BAD_REQUEST, "invalid_field", Some("sort"));

    // Another workspace sees only its own failures, and ours none of its.
    let (_, theirs) = srv.token("acme", "ann", Role::Submitter).await;
    let (_, ours) = srv.token("default", "viewer", Role::Viewer).await;
    let (status, body) =
        srv.call_as(&theirs, Method::POST, "/v1/jobs", Some(fail("default", "acme 1 down", 1, false, "timeout"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let acme_job = body["id"].as_str().unwrap().to_string();
    let acme = poll("acme's failure to be listed", async || {
        let (_, b) = srv.call_as(&theirs, Method::GET, "/v1/errors", None).await;
        (b["total_groups"] == 1).then_some(b)
    })
    .await;
    assert_eq!(acme["groups"][0]["sample_job_id"].as_str(), Some(acme_job.as_str()), "{acme:#}");
    let (status, mine) = srv.call_as(&ours, Method::GET, "/v1/errors", None).await;
    assert_eq!((status, mine["total_groups"].as_u64()), (StatusCode::OK, Some(3)), "{mine:#}");
    srv.stop().await;
}
