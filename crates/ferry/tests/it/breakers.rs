//! Circuit breakers through the API, against a local target that fails on command: the
//! breaker opens after N failures in a row, jobs for it then wait as `scheduled` without
//! spending an attempt, a failed probe reopens it with a longer cool-down, a probe that
//! succeeds closes it and lets the waiting jobs go at once; an operator's changes; one
//! breaker for every node on PostgreSQL.

use crate::harness::{Backend, TestServer, assert_error, both, client, poll};
use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use ferry_core::breaker::BreakerSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

both!(
    a_breaker_opens_holds_jobs_without_attempts_and_a_probe_closes_it,
    an_operator_opens_closes_and_sets_a_breaker_and_bad_changes_change_nothing,
    a_job_whose_budget_ends_while_its_breaker_is_open_dies_with_circuit_open,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_breaker_for_every_node_on_postgres() {
    if crate::harness::postgres_available().await {
        one_breaker_for_every_node(Backend::Postgres).await;
    }
}

/// A target that answers 500 until told it is healthy, counting its requests.
struct Flappy {
    base: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl Flappy {
    async fn start() -> Flappy {
        let healthy = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, n) = (healthy.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/x",
            get(move || {
                n.fetch_add(1, Ordering::SeqCst);
                let up = h.load(Ordering::SeqCst);
                async move { if up { (AxumStatus::OK, "fine") } else { (AxumStatus::INTERNAL_SERVER_ERROR, "down") } }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Flappy { base, healthy, hits }
    }

    fn job(&self, max_attempts: u32) -> Value {
        json!({"kind": "http", "input": {"url": format!("{}/x", self.base)}, "max_attempts": max_attempts,
               "backoff": {"initial_ms": 10, "max_ms": 10}})
    }

    /// The breaker's key: the target's origin.
    fn key(&self) -> String {
        self.base.clone()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A breaker key as a path segment.
fn path(key: &str) -> String {
    format!("/v1/breakers/{}", key.replace('%', "%25").replace(':', "%3A").replace('/', "%2F"))
}

async fn put(srv: &TestServer, key: &str, body: Value) -> (StatusCode, Value) {
    let resp = client().put(format!("{}{}", srv.url(), path(key))).json(&body).send().await.expect("an answer");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn breaker(srv: &TestServer, key: &str) -> Value {
    let (status, b) = srv.get(&path(key)).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    b
}

/// Three failures in a row trip; the first cool-down is long, so that nothing probes
/// unless the test says so.
fn trips_after_three(cfg: &mut ferry::config::Config) {
    cfg.breakers.defaults = BreakerSettings { failures: 3, ratio: 0.0, cool_down_ms: 600_000, ..Default::default() };
}

fn has_event(srv_events: &[Value], kind: &str) -> bool {
    srv_events.iter().any(|e| e["type"] == kind)
}

async fn a_breaker_opens_holds_jobs_without_attempts_and_a_probe_closes_it(backend: Backend) {
    let target = Flappy::start().await;
    let key = target.key();
    let srv = TestServer::start_with(backend, |cfg| {
        cfg.breakers.defaults = BreakerSettings {
            failures: 3,
            ratio: 0.0,
            cool_down_ms: 300,
            max_cool_down_ms: 5_000,
            ..Default::default()
        };
        // Named by the operator: the only breakers with series of their own in /metrics.
        cfg.breakers.targets.insert(key.clone(), cfg.breakers.defaults.clone());
    })
    .await;

    // Three failures in a row (one attempt each) trip the breaker.
    let failing = srv.submit_batch((0..3).map(|_| target.job(1)).collect()).await;
    for id in &failing {
        assert_eq!(srv.wait_state(id, &["dead", "succeeded"]).await["state"], "dead");
    }
    assert_eq!(srv.job(&failing[0]).await["breaker"], key.as_str(), "the job shows its breaker");
    let b = breaker(&srv, &key).await;
    assert_eq!((b["state"].as_str(), b["trips"].as_u64()), (Some("open"), Some(1)), "{b:#}");
    assert_eq!(b["cool_down_ms"], 300);
    assert_eq!(target.hits(), 3);
    let (_, listed) = srv.get("/v1/breakers").await;
    assert_eq!(listed["breakers"][0]["key"], key.as_str());

    // While it is open, jobs for the target wait as scheduled without spending an
    // attempt; after each cool-down one of them goes as the probe, which fails (the target
    // is still down) and opens the breaker again for twice as long.
    let held = srv.submit_batch((0..10).map(|_| target.job(5)).collect()).await;
    for id in &held {
        let events = poll("a breaker_wait", async || {
            let events = srv.events(id).await;
            has_event(&events, "breaker_wait").then_some(events)
        })
        .await;
        let wait = events.iter().find(|e| e["type"] == "breaker_wait").unwrap();
        assert_eq!(wait["data"]["breaker"], key.as_str());
        let job = srv.job(id).await;
        assert_eq!(job["attempts"][0]["outcome"], "released", "{job:#}");
    }
    let b = poll("a failed probe", async || {
        let b = breaker(&srv, &key).await;
        (b["probes"].as_u64() >= Some(1) && b["state"] == "open").then_some(b)
    })
    .await;
    let probes = b["probes"].as_u64().unwrap();
    assert_eq!(b["trips"].as_u64(), Some(1 + probes), "each failed probe reopens it: {b:#}");
    assert!(b["cool_down_ms"].as_u64() >= Some(600), "a failed probe doubles the cool-down: {b:#}");
    assert!(target.hits() as u64 <= 3 + b["probes"].as_u64().unwrap() + 1, "only probes reach it while open");

    // The target recovers: the next probe succeeds, closes the breaker and lets every
    // waiting job go at once.
    target.healthy.store(true, Ordering::SeqCst);
    for id in &held {
        assert_eq!(srv.wait_state(id, &["succeeded", "dead"]).await["state"], "succeeded");
    }
    let b = breaker(&srv, &key).await;
    assert_eq!(b["state"], "closed", "{b:#}");
    // Every request the target saw was a counted attempt: 3 failures, the probes, and one
    // success per held job; none went while the breaker was open.
    let mut counted = 0;
    for id in failing.iter().chain(&held) {
        counted += srv.job(id).await["attempts_used"].as_u64().unwrap();
    }
    assert_eq!(counted as usize, target.hits());
    assert_eq!(target.hits() as u64, 3 + b["probes"].as_u64().unwrap() + 10 - 1, "the last probe was a success");
    let (_, metrics) = srv.get_text("/metrics").await;
    let line = format!("ferry_breaker_state{{breaker=\"{key}\"}} 0");
    assert!(metrics.contains(&line), "{line} in /metrics");
    let trips = format!("ferry_breaker_trips_total{{breaker=\"{key}\"}} {}", b["trips"]);
    assert!(metrics.contains(&trips), "{trips} in /metrics");
    assert!(metrics.contains("ferry_breakers{state=\"closed\"} 1"), "every breaker counted by state");
    srv.stop().await;
}

async fn an_operator_opens_closes_and_sets_a_breaker_and_bad_changes_change_nothing(backend: Backend) {
    let target = Flappy::start().await;
    target.healthy.store(true, Ordering::SeqCst);
    let srv = TestServer::start_with(backend, trips_after_three).await;
    let key = target.key();
    assert_error(&srv.get(&path(&key)).await, StatusCode::NOT_FOUND, "not_found", None);

    // Forced open before any job: jobs wait; closed: they go at once.
    let (status, b) = put(&srv, &key, json!({"state": "open"})).await;
    assert_eq!((status, b["state"].as_str()), (StatusCode::OK, Some("open")), "{b:#}");
    let id = srv.submit(target.job(1)).await;
    srv.wait_job(&id, "held back", |j| j["state"] == "scheduled" && !j["attempts"].as_array().unwrap().is_empty())
        .await;
    assert_eq!(target.hits(), 0);
    let (status, b) = put(&srv, &key, json!({"state": "closed"})).await;
    assert_eq!((status, b["state"].as_str()), (StatusCode::OK, Some("closed")));
    assert_eq!(srv.wait_state(&id, &["succeeded", "dead"]).await["state"], "succeeded");
    assert_eq!(target.hits(), 1);

    // Bad changes are refused, naming the field, and change nothing.
    let before = breaker(&srv, &key).await;
    for (body, field) in [
        (json!({"state": "ajar"}), "state"),
        (json!({"settings": {"failures": 0}}), "settings.failures"),
        (json!({"settings": {"ratio": 2}}), "settings.ratio"),
        (json!({"settings": {"nope": 1}}), "settings"),
        (json!({"reset": "yes"}), "reset"),
        (json!({"colour": "red"}), "colour"),
        (json!({"settings": {"probes": 2}, "state": "ajar"}), "state"),
    ] {
        assert_error(&put(&srv, &key, body).await, StatusCode::BAD_REQUEST, "invalid_field", Some(field));
    }
    assert_eq!(breaker(&srv, &key).await, before, "a refused change changes nothing");
    let (status, same) = put(&srv, &key, json!({"reset": null, "state": null, "settings": null})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["state"], before["state"], "nulls change nothing but the own settings: {same:#}");
    assert_error(&put(&srv, "never-seen", json!({})).await, StatusCode::NOT_FOUND, "not_found", None);

    // Its own settings win over the configured ones: one failure trips it now.
    let (status, b) = put(&srv, &key, json!({"settings": {"failures": 1, "ratio": 0}})).await;
    assert_eq!((status, b["settings"]["failures"].as_u64()), (StatusCode::OK, Some(1)), "{b:#}");
    target.healthy.store(false, Ordering::SeqCst);
    let id = srv.submit(target.job(1)).await;
    srv.wait_state(&id, &["dead"]).await;
    assert_eq!(breaker(&srv, &key).await["state"], "open");
    let (_, metrics) = srv.get_text("/metrics").await;
    assert!(!metrics.contains(&format!("breaker=\"{key}\"")), "a target the operator did not name has no series");
    assert!(metrics.contains("ferry_breakers{state=\"open\"} 1"), "but is counted");
    // A job names its own breaker: it waits behind that one, whatever its URL.
    let own = json!({"kind": "noop", "breaker": "partner-api"});
    put(&srv, "partner-api", json!({"state": "open"})).await;
    let id = srv.submit(own).await;
    let job = srv.wait_job(&id, "held back", |j| j["state"] == "scheduled" && j["breaker"] == "partner-api").await;
    assert_eq!(job["attempts_used"], 0);
    assert_error(
        &srv.post("/v1/jobs", json!({"kind": "noop", "breaker": ""})).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("breaker"),
    );

    // Breakers are the operator's: a workspace admin may not read or change them.
    let (_, admin) = srv.token("default", "ada", ferry_core::auth::Role::Admin).await;
    let (status, _) = srv.call_as(&admin, reqwest::Method::GET, "/v1/breakers", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    srv.stop().await;
}

async fn a_job_whose_budget_ends_while_its_breaker_is_open_dies_with_circuit_open(backend: Backend) {
    let target = Flappy::start().await;
    let srv = TestServer::start_with(backend, trips_after_three).await;
    put(&srv, &target.key(), json!({"state": "open"})).await;
    let mut spec = target.job(5);
    spec["total_timeout_ms"] = json!(60_000);
    let id = srv.submit(spec).await;
    let job = srv.wait_state(&id, &["dead", "succeeded"]).await;
    assert_eq!(job["error"]["type"], "circuit_open", "{job:#}");
    assert_eq!(job["attempts"][0]["error"]["type"], "circuit_open", "the attempt died without running: {job:#}");
    assert!(has_event(&srv.events(&id).await, "dead"));
    assert_eq!(target.hits(), 0);
    srv.stop().await;
}

async fn one_breaker_for_every_node(backend: Backend) {
    let target = Flappy::start().await;
    let a = TestServer::start_with(backend, trips_after_three).await;
    let b = a.peer(|_| {}).await;
    let key = target.key();
    // Failures seen by two nodes' workers count against one breaker: it trips once, at
    // the third failure whichever node saw it. Exactly three: a fourth job could be
    // claimed after the trip and wait out the cool-down.
    let mut failing = a.submit_batch((0..2).map(|_| target.job(1)).collect()).await;
    failing.extend(b.submit_batch(vec![target.job(1)]).await);
    for id in &failing {
        a.wait_state(id, &["dead", "succeeded"]).await;
    }
    let seen = breaker(&b, &key).await;
    assert_eq!((seen["state"].as_str(), seen["trips"].as_u64()), (Some("open"), Some(1)), "{seen:#}");
    assert_eq!(breaker(&a, &key).await["state"], "open", "both nodes see the one breaker");
    let hits = target.hits();
    // Neither node's workers attempt while it is open.
    let mut ids = Vec::new();
    for node in [&a, &b, &a, &b] {
        ids.push(node.submit(target.job(2)).await);
    }
    for id in &ids {
        a.wait_job(id, "held back", |j| j["state"] == "scheduled" && !j["attempts"].as_array().unwrap().is_empty())
            .await;
    }
    assert_eq!(target.hits(), hits, "no node attempted while the breaker was open");
    // Closed through one node: the other's workers take the jobs at once too. The target
    // recovers first: jobs let go by the close and failing again would trip it anew (with
    // its ten-minute cool-down).
    target.healthy.store(true, Ordering::SeqCst);
    put(&b, &key, json!({"state": "closed"})).await;
    for id in &ids {
        assert_eq!(a.wait_state(id, &["succeeded", "dead"]).await["state"], "succeeded");
    }
    b.stop().await;
    a.stop().await;
}
