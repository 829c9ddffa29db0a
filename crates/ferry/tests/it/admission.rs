//! Concurrency limits at their edge, on both backends (and on two API nodes on
//! PostgreSQL): racing submissions admit exactly the limit, the rest get 429 with
//! `Retry-After` and a message naming the limit, and a slot comes back when work ends.

use crate::harness::{Backend, TestServer, both};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    fifty_racing_run_starts_admit_exactly_five,
    fifty_racing_job_submits_admit_exactly_five,
    the_workspace_limit_holds_across_its_users,
    limits_are_read_and_set_by_admins,
    slots_come_back_whichever_way_jobs_end,
    a_full_queue_refuses_with_503_and_a_batch_whole,
    runs_that_may_wait_all_start_in_order_and_never_exceed_the_limit,
    jobs_that_may_wait_are_held_then_run_in_order,
);

/// Sets the workspace's limits (the server is open: no token), expecting 200.
async fn set_limits(srv: &TestServer, limits: Value) {
    let resp = srv.client().put(format!("{}/v1/limits", srv.url())).json(&limits).send().await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK, "setting {limits}");
}

/// Sends `n` concurrent POSTs of `body` to `path`, spread over `servers`; returns the
/// statuses with their `Retry-After` and error message.
async fn race(
    servers: &[&TestServer],
    token: Option<&str>,
    path: &str,
    body: Value,
    n: usize,
) -> Vec<(StatusCode, Option<String>, String)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let srv = servers[i % servers.len()];
        let mut req = srv.client().post(format!("{}{path}", srv.url())).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.expect("answer");
            let status = resp.status();
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body["error"]["message"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn tally(results: &[(StatusCode, Option<String>, String)], message: &str) -> usize {
    let admitted = results.iter().filter(|r| r.0.is_success()).count();
    for (status, retry, msg) in results.iter().filter(|r| !r.0.is_success()) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{msg}");
        assert_eq!(retry.as_deref(), Some("1"), "429 carries Retry-After");
        assert_eq!(msg, message);
    }
    admitted
}

async fn sleepy_workflow(srv: &TestServer) {
    let (status, body) = srv
        .post("/v1/workflows", json!({"name": "nap", "nodes": [{"id": "z", "kind": "sleep", "input": {"ms": 60_000}}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn fifty_racing_run_starts_admit_exactly_five(backend: Backend) {
    let srv = TestServer::start(backend).await;
    sleepy_workflow(&srv).await;
    // On PostgreSQL the starts race through two API nodes.
    let peer = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let mut servers = vec![&srv];
    if let Some(p) = &peer {
        servers.push(p);
    }
    let results = race(&servers, None, "/v1/runs", json!({"workflow": "nap"}), 50).await;
    assert_eq!(tally(&results, "user concurrent run limit reached (5)"), 5, "the default per-user run limit");
    let (_, runs) = srv.get("/v1/runs?state=running").await;
    let running: Vec<String> =
        runs["items"].as_array().expect("items").iter().map(|r| r["id"].as_str().expect("id").to_string()).collect();
    assert_eq!(running.len(), 5);
    // A cancelled run gives its slot back at once.
    let (status, _) = srv.post(&format!("/v1/runs/{}/cancel", running[0]), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.post("/v1/runs", json!({"workflow": "nap"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = srv.post("/v1/runs", json!({"workflow": "nap"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (_, runs) = srv.get("/v1/runs?state=running").await;
    for r in runs["items"].as_array().expect("items") {
        srv.post(&format!("/v1/runs/{}/cancel", r["id"].as_str().expect("id")), json!({})).await;
    }
    if let Some(p) = peer {
        p.stop().await;
    }
    srv.stop().await;
}

async fn fifty_racing_job_submits_admit_exactly_five(backend: Backend) {
    let srv = TestServer::start(backend).await;
    set_limits(&srv, json!({"per_user": {"runs": 5, "jobs": 5}})).await;
    // On PostgreSQL the submits race through two API nodes.
    let peer = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let mut servers = vec![&srv];
    if let Some(p) = &peer {
        servers.push(p);
    }
    let results = race(&servers, None, "/v1/jobs", json!({"kind": "sleep", "input": {"ms": 60_000}}), 50).await;
    assert_eq!(tally(&results, "user concurrent job limit reached (5)"), 5);
    if let Some(p) = peer {
        p.stop().await;
    }
    // A batch is admitted whole or not at all: 2 do not fit beside 5 of 5.
    let (status, body) = srv.post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, {"kind": "noop"}]})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(srv.count_jobs().await, 5, "nothing of the refused batch was stored");
    // Every way out frees a slot: here, a cancel.
    let (_, page) = srv.get("/v1/jobs?limit=1").await;
    let id = page["items"][0]["id"].as_str().expect("id").to_string();
    let (status, _) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = srv.post("/v1/jobs", json!({"kind": "noop"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    srv.stop().await;
}

async fn the_workspace_limit_holds_across_its_users(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, admin) = srv.token("w", "root", Role::Admin).await;
    let (_, ann) = srv.token("w", "ann", Role::Submitter).await;
    let (_, bob) = srv.token("w", "bob", Role::Submitter).await;
    let limits = json!({"per_workspace": {"runs": 3, "jobs": null}, "per_user": {"runs": 5, "jobs": null},
                        "users": {"bob": {"runs": 1, "jobs": null}}, "tokens_per_day": 5_000_000});
    let (status, body) = srv.call_as(&admin, Method::PUT, "/v1/limits", Some(limits.clone())).await;
    assert_eq!((status, &body), (StatusCode::OK, &limits));
    let (status, _) = srv
        .call_as(
            &admin,
            Method::POST,
            "/v1/workflows",
            Some(json!({"name": "nap", "nodes": [{"id": "z", "kind": "sleep", "input": {"ms": 60_000}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    async fn start(srv: &TestServer, token: &str) -> (StatusCode, Value) {
        srv.call_as(token, Method::POST, "/v1/runs", Some(json!({"workflow": "nap"}))).await
    }
    assert_eq!(start(&srv, &bob).await.0, StatusCode::CREATED);
    let (status, body) = start(&srv, &bob).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("user concurrent run limit reached (1)")),
        "bob's own limit"
    );
    assert_eq!(start(&srv, &ann).await.0, StatusCode::CREATED);
    assert_eq!(start(&srv, &ann).await.0, StatusCode::CREATED);
    let (status, body) = start(&srv, &ann).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("workspace concurrent run limit reached (3)")),
        "ann is under her own limit, the workspace is full"
    );
    let (_, runs) = srv.call_as(&admin, Method::GET, "/v1/runs?state=running", None).await;
    for r in runs["items"].as_array().expect("items") {
        srv.call_as(&admin, Method::POST, &format!("/v1/runs/{}/cancel", r["id"].as_str().expect("id")), None).await;
    }
    srv.stop().await;
}

async fn limits_are_read_and_set_by_admins(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = srv.get("/v1/limits").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"per_workspace": {"runs": 10, "jobs": null}, "per_user": {"runs": 5, "jobs": null}, "users": {},
               "tokens_per_day": 5_000_000, "tokens_today": 0}),
        "the server's defaults, and no tokens used today"
    );
    let (_, viewer) = srv.token("default", "v", Role::Viewer).await;
    let (_, submitter) = srv.token("default", "s", Role::Submitter).await;
    let (_, admin) = srv.token("default", "a", Role::Admin).await;
    assert_eq!(srv.call_as(&viewer, Method::GET, "/v1/limits", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.call_as(&submitter, Method::PUT, "/v1/limits", Some(json!({}))).await.0, StatusCode::FORBIDDEN);
    for (bad, field) in [
        (json!({"per_user": {"runs": -1}}), "per_user.runs"),
        (json!({"per_user": {"cpus": 1}}), "per_user"),
        (json!({"users": {"bad name": {"runs": 1}}}), "users.bad name"),
    ] {
        let (status, body) = srv.call_as(&admin, Method::PUT, "/v1/limits", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["field"].as_str().unwrap_or("").starts_with(field), "{bad}: {body}");
    }
    let (status, _) = srv.call_as(&admin, Method::PUT, "/v1/limits", Some(json!({"per_user": {"jobs": 7}}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = srv.call_as(&admin, Method::GET, "/v1/limits", None).await;
    assert_eq!(body["per_user"], json!({"runs": null, "jobs": 7}), "what was set, with null for no limit");
    assert_eq!(body["tokens_per_day"], 5_000_000, "not given: the default");
    // What GET answers can be PUT back as is: `tokens_today` is read-only and ignored.
    let (status, again) = srv.call_as(&admin, Method::PUT, "/v1/limits", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(again.get("tokens_today").is_none(), "never stored: {again}");
    let (status, _) = srv.call_as(&admin, Method::PUT, "/v1/limits", Some(json!({"tokens_per_day": null}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(srv.call_as(&admin, Method::GET, "/v1/limits", None).await.1["tokens_per_day"], Value::Null);
    srv.stop().await;
}

async fn slots_come_back_whichever_way_jobs_end(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| {
        cfg.workers = 50;
        // Nobody serves `lost`: a ghost worker claims there and vanishes.
        cfg.queues.insert(
            "lost".into(),
            ferry::config::QueueSettings { concurrency: Some(0), max_depth: None, severity: None },
        );
    })
    .await;
    set_limits(&srv, json!({"per_user": {"runs": 5, "jobs": 41}})).await;
    // Ten each: succeed, die, time out, get cancelled; one more loses its worker.
    let mut specs = Vec::new();
    for _ in 0..10 {
        specs.push(json!({"kind": "noop"}));
        specs.push(json!({"kind": "fail", "input": {"retryable": false}}));
        specs.push(json!({"kind": "sleep", "input": {"ms": 60_000}, "timeout_ms": 200, "max_attempts": 1}));
        specs.push(json!({"kind": "sleep", "input": {"ms": 60_000}, "labels": {"end": "cancel"}}));
    }
    let mut ids = srv.submit_batch(specs).await;
    // And one whose worker is lost mid-attempt (no more attempts: it dies).
    let ghost = srv.submit(json!({"kind": "noop", "queue": "lost", "max_attempts": 1})).await;
    let claimed = crate::harness::poll("the ghost to claim", async || {
        let req = ferry_store::ClaimRequest { queue: "lost".into(), limit: 1, worker: "ghost".into(), lease_ms: 200 };
        let got = srv.store.claim(req).await.expect("claim").jobs;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(claimed[0].id.to_string(), ghost);
    for (i, id) in ids.iter().enumerate() {
        if i % 4 == 3 {
            let (status, _) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    ids.push(ghost.clone());
    for id in &ids {
        srv.wait_state(id, &["succeeded", "dead", "cancelled"]).await;
    }
    assert_eq!(srv.job(&ghost).await["error"]["type"], "worker_lost");
    // Every slot is back: a whole new batch of 41 fits, one more does not.
    let again = srv.submit_batch((0..41).map(|_| json!({"kind": "sleep", "input": {"ms": 60_000}})).collect()).await;
    assert_eq!(again.len(), 41);
    let (status, _) = srv.post("/v1/jobs", json!({"kind": "noop"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for id in again {
        srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    }
    srv.stop().await;
}

async fn a_full_queue_refuses_with_503_and_a_batch_whole(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| {
        // Nobody serves `small`, so what is submitted stays waiting.
        cfg.queues.insert(
            "small".into(),
            ferry::config::QueueSettings { concurrency: Some(0), max_depth: Some(5), severity: None },
        );
    })
    .await;
    let job = |delay: u64| json!({"kind": "noop", "queue": "small", "delay_ms": delay});
    for i in 0..4 {
        // Scheduled jobs wait too, and count.
        srv.submit(job(if i % 2 == 0 { 0 } else { 60_000 })).await;
    }
    // Two do not fit beside four of five: the batch is refused whole, nothing is stored.
    let (status, body) = srv.post("/v1/jobs/batch", json!({"jobs": [job(0), job(0)]})).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("queue_full")), "{body}");
    let (status, body) = srv.post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, job(0), job(0)]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a batch over two queues is whole too: {body}");
    assert_eq!(srv.count_jobs().await, 4);
    // The fifth fits, at the edge; the sixth is refused with Retry-After.
    srv.submit(job(0)).await;
    let resp = srv.client().post(format!("{}/v1/jobs", srv.url())).json(&job(0)).send().await.expect("answer");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["field"], "queue");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("`small` is full"), "{body}");
    // Other queues are not affected; a cancelled job frees its place.
    let (status, _) = srv.post("/v1/jobs", json!({"kind": "noop"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, page) = srv.get("/v1/jobs?queue=small&limit=1").await;
    let id = page["items"][0]["id"].as_str().expect("id").to_string();
    srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    let (status, body) = srv.post("/v1/jobs", job(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, metrics) = srv.get_text("/metrics").await;
    assert!(metrics.contains("ferry_admission_refused_total{reason=\"queue_full\"}"), "refusals are counted by reason");
    srv.stop().await;
}

async fn runs_that_may_wait_all_start_in_order_and_never_exceed_the_limit(backend: Backend) {
    let srv = TestServer::start(backend).await;
    set_limits(&srv, json!({"per_user": {"runs": 2, "jobs": null}})).await;
    // The first two hold their places until the test cancels them, however slow the
    // machine: the checks below must see the limit full.
    for (name, ms) in [("long", 600_000), ("short", 300)] {
        let workflow = json!({"name": name, "nodes": [{"id": "z", "kind": "sleep", "input": {"ms": ms}}]});
        let (status, _) = srv.post("/v1/workflows", workflow).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut ids = Vec::new();
    for i in 0..6 {
        let workflow = if i < 2 { "long" } else { "short" };
        let (status, body) = srv.post("/v1/runs", json!({"workflow": workflow, "on_limit": "queue"})).await;
        assert_eq!(status, StatusCode::CREATED, "every run is admitted: {body}");
        assert_eq!(body["state"], if i < 2 { "running" } else { "queued" }, "run {i}: {body}");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    // One more, then cancelled while it waits: it never starts.
    let (_, extra) = srv.post("/v1/runs", json!({"workflow": "short", "on_limit": "queue"})).await;
    let extra = extra["id"].as_str().expect("id").to_string();
    let (status, body) = srv.post(&format!("/v1/runs/{extra}/cancel"), json!({})).await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("cancelled")), "{body}");
    // Without on_limit the limit still refuses.
    let (status, _) = srv.post("/v1/runs", json!({"workflow": "short"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for id in &ids[..2] {
        let (status, body) = srv.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let started = std::time::Instant::now();
    loop {
        let (_, running) = srv.get("/v1/runs?state=running").await;
        let n = running["items"].as_array().map(Vec::len).unwrap_or(0);
        assert!(n <= 2, "never more than the limit running: {n}");
        let (_, done) = srv.get("/v1/runs?state=succeeded").await;
        if done["items"].as_array().map(Vec::len) == Some(4) {
            break;
        }
        assert!(started.elapsed() < crate::harness::DEADLINE, "the queued runs did not all run");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // They started in the order they were queued.
    let mut starts = Vec::new();
    for id in &ids {
        let (_, events) = srv.get(&format!("/v1/runs/{id}/events")).await;
        let ev = events["events"].as_array().expect("events");
        let start = ev.iter().find(|e| e["type"] == "run_started").expect("run_started")["at"]
            .as_str()
            .expect("at")
            .to_string();
        starts.push(start);
    }
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "queued runs start in order");
    let (_, extra_events) = srv.get(&format!("/v1/runs/{extra}/events")).await;
    let types: Vec<&str> =
        extra_events["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["run_queued", "run_finished"], "the cancelled waiting run never started");
    srv.stop().await;
}

async fn jobs_that_may_wait_are_held_then_run_in_order(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| cfg.workers = 20).await;
    set_limits(&srv, json!({"per_user": {"runs": 5, "jobs": 2}})).await;
    let spec = json!({"kind": "sleep", "input": {"ms": 200}, "on_limit": "queue"});
    // The first two hold their places until the test cancels them, however slow the
    // machine: the checks below must see the limit full.
    let long = json!({"kind": "sleep", "input": {"ms": 600_000}, "on_limit": "queue"});
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, body) = srv.post("/v1/jobs", if i < 2 { long.clone() } else { spec.clone() }).await;
        assert_eq!(status, StatusCode::CREATED, "every job is admitted: {body}");
        if i >= 2 {
            assert_eq!(body["state"], "held", "job {i}: {body}");
        }
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    let (_, extra) = srv.post("/v1/jobs", spec.clone()).await;
    let extra = extra["id"].as_str().expect("id").to_string();
    let (status, _) = srv.post(&format!("/v1/jobs/{extra}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "a held job can be cancelled");
    let (status, _) = srv.post("/v1/jobs", json!({"kind": "noop"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "without on_limit the limit still refuses");
    for id in &ids[..2] {
        let (status, body) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let started = std::time::Instant::now();
    loop {
        // One listing is one snapshot of every job's state (reading the jobs one by one
        // could see a job still running and the one released after it already queued).
        let (_, page) = srv.get("/v1/jobs?limit=100").await;
        let (mut in_flight, mut done) = (0, 0);
        for job in page["items"].as_array().expect("items").iter().filter(|j| ids.iter().any(|id| j["id"] == *id)) {
            match job["state"].as_str() {
                Some("succeeded" | "cancelled") => done += 1,
                Some("held") => {}
                _ => in_flight += 1,
            }
        }
        assert!(in_flight <= 2, "never more than the limit in flight: {in_flight}");
        if done == ids.len() {
            break;
        }
        assert!(started.elapsed() < crate::harness::DEADLINE, "the held jobs did not all run");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut starts = Vec::new();
    for id in &ids {
        starts.push(srv.job(id).await["attempts"][0]["started_at"].as_str().expect("started").to_string());
    }
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "held jobs run in the order they were held");
    let types = srv.event_types(&extra).await;
    assert_eq!(types, vec!["held", "cancelled"], "the cancelled held job never ran");
    srv.stop().await;
}
