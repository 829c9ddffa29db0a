//! Workflows and runs through the API, on both backends: data flowing along a DAG,
//! retries, failure policies, timeouts, cancels, a 1,000-wide fan-out, validation, and the
//! run's event stream resumed after a disconnect (on another node, on PostgreSQL).

use crate::harness::{Backend, DEADLINE, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    a_diamond_passes_data_along,
    a_node_that_fails_then_succeeds_on_retry,
    fail_fast_stops_the_run_at_the_first_dead_node,
    continue_skips_only_what_is_downstream,
    a_workflow_timeout_ends_the_run,
    cancel_mid_run,
    a_thousand_wide_for_each,
    a_missing_workflow_is_404_an_unknown_version_400_and_neither_starts_anything,
    every_validation_error_names_the_node_and_field,
    versions_stay_runnable,
    run_events_resume_exactly_after_a_disconnect,
    job_events_stream_and_resume,
);

/// Registers a workflow, expecting 201; returns its version.
async fn register(srv: &TestServer, def: Value) -> u64 {
    let (status, body) = srv.post("/v1/workflows", def.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "registering {def} answered {body}");
    body["version"].as_u64().expect("version")
}

/// Starts a run, expecting 201; returns its id.
async fn start(srv: &TestServer, workflow: &str, input: Value) -> String {
    let (status, body) = srv.post("/v1/runs", json!({"workflow": workflow, "input": input})).await;
    assert_eq!(status, StatusCode::CREATED, "starting {workflow} answered {body}");
    body["id"].as_str().expect("id").to_string()
}

async fn run(srv: &TestServer, id: &str) -> Value {
    let (status, body) = srv.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the run until it is in a final state; panics after the deadline.
async fn wait_run(srv: &TestServer, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let r = run(srv, id).await;
        if r["state"] != "running" {
            return r;
        }
        assert!(started.elapsed() < DEADLINE, "run {id} did not end; last seen: {r:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == id).unwrap_or_else(|| panic!("node {id}"))
}

async fn run_events(srv: &TestServer, id: &str) -> Vec<Value> {
    let (status, body) = srv.get(&format!("/v1/runs/{id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().expect("events").clone()
}

async fn a_diamond_passes_data_along(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let def = json!({
        "name": "diamond",
        "nodes": [
            {"id": "a", "kind": "noop", "input": {"x": "{{ input.x }}", "list": "{{ input.list }}"}},
            {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"from_a": "{{ nodes.a.output.x }}"}},
            {"id": "c", "kind": "noop", "depends_on": ["a"], "input": {"second": "{{ nodes.a.output.list[1] }}"}},
            {"id": "d", "kind": "noop", "depends_on": ["b", "c"], "input": {
                "b": "{{ nodes.b.output.from_a }}", "c": "{{ nodes.c.output.second }}",
                "text": "b={{ nodes.b.output.from_a }} c={{ nodes.c.output }}"}}
        ]
    });
    assert_eq!(register(&srv, def).await, 1);
    let id = start(&srv, "diamond", json!({"x": 5, "list": [1, {"k": true}]})).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(
        node(&r, "d")["output"],
        json!({"b": 5, "c": {"k": true}, "text": "b=5 c={\"second\":{\"k\":true}}"}),
        "references keep their JSON type; text interpolates"
    );
    for n in ["a", "b", "c", "d"] {
        assert_eq!(node(&r, n)["state"], "succeeded", "{r:#}");
        assert_eq!(node(&r, n)["attempts"], 1);
    }
    let events = run_events(&srv, &id).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
    assert_eq!(types.first(), Some(&"run_started"), "{types:?}");
    assert_eq!(types.last(), Some(&"run_finished"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "succeeded").count(), 4, "{types:?}");
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    // d started only after both b and c succeeded.
    let pos = |t: &str, n: &str| events.iter().position(|e| e["type"] == t && e["node"] == n).expect("event");
    assert!(pos("queued", "d") > pos("succeeded", "b") && pos("queued", "d") > pos("succeeded", "c"));
    srv.stop().await;
}

async fn a_node_that_fails_then_succeeds_on_retry(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let def = json!({"name": "flaky", "nodes": [
        {"id": "f", "kind": "fail", "input": {"type": "network", "times": 2}, "max_attempts": 3,
         "backoff": {"initial_ms": 10, "max_ms": 10, "jitter": "none"}},
        {"id": "after", "kind": "noop", "depends_on": ["f"], "input": "{{ nodes.f.output }}"}
    ]});
    register(&srv, def).await;
    let id = start(&srv, "flaky", json!(null)).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(node(&r, "f")["attempts"], 3);
    assert_eq!(node(&r, "after")["output"], json!({"attempt": 3}));
    let types: Vec<String> =
        run_events(&srv, &id).await.iter().map(|e| e["type"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(types.iter().filter(|t| *t == "attempt_failed").count(), 2, "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "retry_scheduled").count(), 2, "{types:?}");
    srv.stop().await;
}

fn failing_workflow(name: &str, policy: &str) -> Value {
    json!({"name": name, "failure_policy": policy, "nodes": [
        {"id": "bad", "kind": "fail", "input": {"retryable": false}},
        {"id": "slow", "kind": "sleep", "input": {"ms": "{{ input.slow_ms }}"}},
        {"id": "child", "kind": "noop", "depends_on": ["bad"]},
        {"id": "grandchild", "kind": "noop", "depends_on": ["child", "slow"]},
        {"id": "after_slow", "kind": "noop", "depends_on": ["slow"], "input": "{{ nodes.slow.output }}"}
    ]})
}

async fn fail_fast_stops_the_run_at_the_first_dead_node(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(&srv, failing_workflow("ff", "fail_fast")).await;
    let id = start(&srv, "ff", json!({"slow_ms": 20_000})).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "failed", "{r:#}");
    assert!(r["error"]["message"].as_str().unwrap_or("").contains("bad"), "{r:#}");
    assert_eq!(node(&r, "bad")["state"], "failed");
    assert_eq!(node(&r, "slow")["state"], "cancelled", "the running node is stopped: {r:#}");
    assert_eq!(node(&r, "slow")["jobs"][0]["state"], "cancelled");
    for n in ["child", "grandchild", "after_slow"] {
        assert_eq!(node(&r, n)["state"], "skipped", "{n}: {r:#}");
        assert_eq!(node(&r, n)["jobs"], json!([]), "a skipped node never starts");
    }
    srv.stop().await;
}

async fn continue_skips_only_what_is_downstream(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(&srv, failing_workflow("cont", "continue")).await;
    let id = start(&srv, "cont", json!({"slow_ms": 50})).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "failed", "a failed node fails the run in the end: {r:#}");
    assert_eq!(node(&r, "bad")["state"], "failed");
    assert_eq!(node(&r, "slow")["state"], "succeeded");
    assert_eq!(node(&r, "after_slow")["state"], "succeeded", "independent nodes go on: {r:#}");
    assert_eq!(node(&r, "after_slow")["output"], json!({"slept_ms": 50}));
    assert_eq!(node(&r, "child")["state"], "skipped");
    assert_eq!(node(&r, "grandchild")["state"], "skipped", "downstream of a skipped node too");
    srv.stop().await;
}

async fn a_workflow_timeout_ends_the_run(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(
        &srv,
        json!({"name": "slowpoke", "timeout_ms": 300, "nodes": [
            {"id": "nap", "kind": "sleep", "input": {"ms": 30_000}},
            {"id": "after", "kind": "noop", "depends_on": ["nap"]}
        ]}),
    )
    .await;
    let id = start(&srv, "slowpoke", json!(null)).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "timed_out", "{r:#}");
    assert_eq!(node(&r, "nap")["state"], "timed_out");
    assert_eq!(node(&r, "nap")["jobs"][0]["state"], "cancelled");
    assert_eq!(node(&r, "after")["state"], "skipped");
    let types: Vec<String> =
        run_events(&srv, &id).await.iter().map(|e| e["type"].as_str().unwrap_or("").to_string()).collect();
    assert!(types.contains(&"run_timed_out".to_string()), "{types:?}");
    // The attempt was stopped, not left running.
    let started = Instant::now();
    while srv.engine_running() > 0 {
        assert!(started.elapsed() < DEADLINE, "the timed-out node's attempt kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

async fn cancel_mid_run(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(
        &srv,
        json!({"name": "long", "nodes": [
            {"id": "first", "kind": "sleep", "input": {"ms": 30_000}},
            {"id": "second", "kind": "noop", "depends_on": ["first"]}
        ]}),
    )
    .await;
    let id = start(&srv, "long", json!(null)).await;
    let started = Instant::now();
    while node(&run(&srv, &id).await, "first")["jobs"][0]["state"] != "running" {
        assert!(started.elapsed() < DEADLINE, "the first node never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = srv.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("cancelled")), "{body}");
    let r = run(&srv, &id).await;
    assert_eq!(r["state"], "cancelled");
    assert_eq!(node(&r, "first")["state"], "cancelled");
    assert_eq!(node(&r, "second")["state"], "skipped");
    let (status, _) = srv.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a second cancel finds the run ended");
    let started = Instant::now();
    while srv.engine_running() > 0 {
        assert!(started.elapsed() < DEADLINE, "the cancelled node's attempt kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

async fn a_thousand_wide_for_each(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| cfg.workers = 64).await;
    register(
        &srv,
        json!({"name": "fan", "nodes": [
            {"id": "each", "kind": "noop", "for_each": "{{ input.items }}", "concurrency": 200,
             "input": {"n": "{{ item }}", "tag": "{{ input.tag }}"}},
            {"id": "join", "kind": "noop", "depends_on": ["each"], "input": {"all": "{{ nodes.each.output }}"}}
        ]}),
    )
    .await;
    let items: Vec<u32> = (0..1000).collect();
    let id = start(&srv, "fan", json!({"items": items, "tag": "t"})).await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "{}", r["error"]);
    let each = node(&r, "each");
    assert_eq!((each["items"].as_u64(), each["jobs"].as_array().map(Vec::len)), (Some(1000), Some(1000)));
    let all = node(&r, "join")["output"]["all"].as_array().expect("the join saw every output").clone();
    assert_eq!(all.len(), 1000);
    for (i, out) in all.iter().enumerate() {
        assert_eq!(out, &json!({"n": i, "tag": "t"}), "outputs in element order");
    }
    srv.stop().await;
}

async fn a_missing_workflow_is_404_an_unknown_version_400_and_neither_starts_anything(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let got = srv.post("/v1/runs", json!({"workflow": "nope"})).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", Some("workflow"));
    let got = srv.post("/v1/runs", json!({"workflow": "nope", "version": 1})).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", Some("workflow"));
    register(&srv, json!({"name": "one", "nodes": [{"id": "a", "kind": "noop"}]})).await;
    register(&srv, json!({"name": "one", "nodes": [{"id": "b", "kind": "noop"}]})).await;
    // The workflow exists: a version it lacks is a bad request, naming that version and
    // the latest.
    let got = srv.post("/v1/runs", json!({"workflow": "one", "version": 3, "input": {"x": 1}})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "unknown_version", Some("version"));
    assert_eq!(got.1["error"]["message"], "workflow `one` has no version 3; the latest is 2", "{}", got.1);
    let got = srv.post_with("/v1/runs", json!({"workflow": "one", "version": 7}), &[("Idempotency-Key", "k1")]).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "unknown_version", Some("version"));
    let (_, runs) = srv.get("/v1/runs").await;
    assert_eq!(runs["items"], json!([]), "nothing started");
    assert_eq!(srv.count_jobs().await, 0);
    srv.stop().await;
}

async fn every_validation_error_names_the_node_and_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let n = |id: &str, deps: Value| json!({"id": id, "kind": "noop", "depends_on": deps});
    let cases = [
        (json!({"name": "w", "nodes": [n("a", json!(["b"])), n("b", json!(["a"]))]}), "depends_on", "cycle"),
        (json!({"name": "w", "nodes": [n("a", json!([])), n("a", json!([]))]}), "nodes[1].id", "duplicate"),
        (json!({"name": "w", "nodes": [n("a", json!(["ghost"]))]}), "nodes[0].depends_on[0]", "ghost"),
        (json!({"name": "w", "nodes": [{"id": "a", "kind": "teleport"}]}), "nodes[0].kind", "teleport"),
        (
            json!({"name": "w", "nodes": [n("a", json!([])), {"id": "b", "kind": "noop", "input": "{{ nodes.c.output }}"}, n("c", json!([]))]}),
            "nodes[1].input",
            "c",
        ),
        (json!({"name": "w", "nodes": [{"id": "a", "kind": "noop", "timeout_ms": 0}]}), "nodes[0].timeout_ms", ""),
        (json!({"name": "w", "nodes": []}), "nodes", ""),
        (json!({"name": "w", "nodes": [{"id": "a", "kind": "noop", "colour": 1}]}), "nodes[0]", "colour"),
        (json!({"name": "w", "nodes": [{"id": "a", "kind": "sleep", "input": {}}]}), "nodes[0].input.ms", "required"),
    ];
    for (def, field, word) in cases {
        let (status, body) = srv.post("/v1/workflows", def.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{def}: {body}");
        let got = body["error"]["field"].as_str().unwrap_or("");
        assert!(got.contains(field), "{def}: field {got:?} should name {field:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(word), "{def}: {body}");
    }
    let (_, list) = srv.get("/v1/workflows").await;
    assert_eq!(list["workflows"], json!([]), "nothing was registered");
    srv.stop().await;
}

async fn versions_stay_runnable(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let v = |out: &str| json!({"name": "ver", "nodes": [{"id": "a", "kind": "noop", "input": {"v": out}}]});
    assert_eq!(register(&srv, v("one")).await, 1);
    assert_eq!(register(&srv, v("two")).await, 2);
    let (_, body) = srv.get("/v1/workflows/ver").await;
    assert_eq!(body["versions"].as_array().map(Vec::len), Some(2), "{body}");
    let (_, list) = srv.get("/v1/workflows").await;
    assert_eq!(list["workflows"][0]["latest_version"], 2, "{list}");
    let latest = start(&srv, "ver", json!(null)).await;
    let (status, body) = srv.post("/v1/runs", json!({"workflow": "ver", "version": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let old = body["id"].as_str().expect("id").to_string();
    assert_eq!(node(&wait_run(&srv, &latest).await, "a")["output"], json!({"v": "two"}));
    assert_eq!(node(&wait_run(&srv, &old).await, "a")["output"], json!({"v": "one"}));
    srv.stop().await;
}

/// One event of a stream: (id, type) or a keep-alive comment.
#[derive(Debug, PartialEq)]
pub(crate) enum Sse {
    Event(i64, String),
    Comment,
}

/// Reads a stream until `stop` says so or the server closes it.
pub(crate) async fn read_sse(resp: reqwest::Response, mut stop: impl FnMut(&[Sse]) -> bool) -> (Vec<Sse>, bool) {
    let mut resp = resp;
    let mut buf = String::new();
    let mut got = Vec::new();
    loop {
        let chunk = tokio::time::timeout(DEADLINE, resp.chunk()).await.expect("the stream stalled").expect("read");
        let Some(chunk) = chunk else { return (got, true) };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind) = (None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if line.starts_with(':') {
                    got.push(Sse::Comment);
                }
            }
            if let Some(id) = id {
                got.push(Sse::Event(id, kind));
            }
            if stop(&got) {
                return (got, false);
            }
        }
    }
}

async fn run_events_resume_exactly_after_a_disconnect(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| cfg.sse_keep_alive_ms = 100).await;
    // On PostgreSQL the stream is read from another node than the one running the work.
    let reader = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let watch = reader.as_ref().unwrap_or(&srv);
    let steps: Vec<Value> = (0..6)
        .map(|i| {
            let deps = if i == 0 { json!([]) } else { json!([format!("s{}", i - 1)]) };
            json!({"id": format!("s{i}"), "kind": "sleep", "input": {"ms": 150}, "depends_on": deps})
        })
        .collect();
    register(&srv, json!({"name": "chain", "nodes": steps})).await;
    let id = start(&srv, "chain", json!(null)).await;
    let url = format!("{}/v1/runs/{id}/events", watch.url());
    let open = |last: Option<i64>| {
        let mut req = watch.client().get(&url).header("accept", "text/event-stream");
        if let Some(last) = last {
            req = req.header("last-event-id", last.to_string());
        }
        req.send()
    };
    let resp = open(None).await.expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    let (first, closed) = read_sse(resp, |got| got.iter().filter(|e| matches!(e, Sse::Event(..))).count() >= 5).await;
    assert!(!closed);
    let first: Vec<(i64, String)> =
        first.into_iter().filter_map(|e| if let Sse::Event(i, t) = e { Some((i, t)) } else { None }).collect();
    let last = first.last().expect("some events").0;
    // Disconnected (the response is dropped); events go on meanwhile.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = open(Some(last)).await.expect("stream again");
    let (rest, closed) = read_sse(resp, |_| false).await;
    assert!(closed, "the stream closes after the final event");
    assert!(rest.contains(&Sse::Comment), "keep-alive comments while nodes sleep");
    let rest: Vec<(i64, String)> =
        rest.into_iter().filter_map(|e| if let Sse::Event(i, t) = e { Some((i, t)) } else { None }).collect();
    assert_eq!(rest.last().map(|e| e.1.as_str()), Some("run_finished"));
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "the disconnect did not disturb the run");

    let mut streamed = first.clone();
    streamed.extend(rest);
    let all: Vec<(i64, String)> = run_events(watch, &id)
        .await
        .iter()
        .map(|e| (e["id"].as_i64().expect("id"), e["type"].as_str().expect("type").to_string()))
        .collect();
    assert_eq!(streamed, all, "exactly the log: nothing missed, nothing twice");
    // `?after=` gives the same tail as a JSON list.
    let (_, tail) = watch.get(&format!("/v1/runs/{id}/events?after={last}")).await;
    assert_eq!(tail["events"].as_array().map(Vec::len), Some(all.iter().filter(|e| e.0 > last).count()));
    if let Some(reader) = reader {
        reader.stop().await;
    }
    srv.stop().await;
}

async fn job_events_stream_and_resume(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let id = srv
        .submit(json!({"kind": "fail", "input": {"type": "network", "times": 2}, "max_attempts": 3,
                       "backoff": {"initial_ms": 200, "max_ms": 200, "jitter": "none"}}))
        .await;
    let url = format!("{}/v1/jobs/{id}/events", srv.url());
    let open = |last: Option<i64>| {
        let mut req = srv.client().get(&url).header("accept", "text/event-stream");
        if let Some(last) = last {
            req = req.header("last-event-id", last.to_string());
        }
        req.send()
    };
    let (first, closed) = read_sse(open(None).await.expect("stream"), |got| got.len() >= 3).await;
    assert!(!closed);
    let events = |v: Vec<Sse>| -> Vec<(i64, String)> {
        v.into_iter().filter_map(|e| if let Sse::Event(i, t) = e { Some((i, t)) } else { None }).collect()
    };
    let first = events(first);
    let last = first.last().expect("events").0;
    let (rest, closed) = read_sse(open(Some(last)).await.expect("stream"), |_| false).await;
    assert!(closed, "the stream closes after the final event");
    let rest = events(rest);
    assert_eq!(rest.last().map(|e| e.1.as_str()), Some("succeeded"));
    let mut streamed = first;
    streamed.extend(rest);
    let all: Vec<(i64, String)> = srv
        .events(&id)
        .await
        .iter()
        .map(|e| (e["id"].as_i64().expect("id"), e["type"].as_str().expect("type").to_string()))
        .collect();
    assert_eq!(streamed, all, "nothing missed, nothing twice");
    // A finished job's stream replays and closes at once; `?after=` filters the JSON list.
    let (again, closed) = read_sse(open(None).await.expect("stream"), |_| false).await;
    assert!(closed);
    assert_eq!(events(again), all);
    let (_, tail) = srv.get(&format!("/v1/jobs/{id}/events?after={last}")).await;
    assert_eq!(tail["events"].as_array().map(Vec::len), Some(all.iter().filter(|e| e.0 > last).count()));
    let (status, body) = srv
        .client()
        .get(format!("{}/v1/jobs/{}/events", srv.url(), uuid::Uuid::now_v7()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .map(|r| (r.status(), ()))
        .expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    srv.stop().await;
}
