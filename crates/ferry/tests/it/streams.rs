//! Promise: an event stream waits for a signal instead of polling, yet delivers a new
//! event promptly (written on this node or, on PostgreSQL, another); open streams are
//! capped per token and per node (429 `too_many_streams` past either); a stream ends when
//! its token is revoked; and `/metrics` names no workflow or workspace.

use crate::harness::{Backend, DEADLINE, TestServer, both, poll};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    a_waiting_stream_gets_a_new_event_at_once,
    streams_are_capped_per_token_and_per_node,
    a_stream_ends_when_its_token_is_revoked,
    an_open_mode_stream_ends_when_the_first_token_is_created,
    metrics_name_no_workflow_and_no_workspace,
);

/// An open event stream, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

/// One server-sent event: its `event:` type and `data:`.
#[derive(Debug)]
struct Received {
    kind: String,
    data: String,
}

impl Stream {
    async fn open(
        srv: &TestServer,
        path: &str,
        token: Option<&str>,
    ) -> Result<Stream, (StatusCode, Option<String>, Value)> {
        let mut req = srv.client().get(format!("{}{path}", srv.url())).header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("the server answers");
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
            return Err((status, retry, resp.json().await.unwrap_or(Value::Null)));
        }
        Ok(Stream { resp, buf: String::new() })
    }

    /// The next event (skipping comments) within `within`; `None` when the stream closed.
    async fn next(&mut self, within: Duration) -> Option<Received> {
        let until = Instant::now() + within;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut kind, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(kind) = kind {
                    return Some(Received { kind, data });
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk()).await.expect("no event in time").expect("read");
            self.buf.push_str(&String::from_utf8_lossy(&chunk?));
        }
    }
}

/// A job that waits an hour before it is due: its stream stays open and idle.
async fn waiting_job(srv: &TestServer, token: Option<&str>) -> String {
    let spec = json!({"kind": "noop", "delay_ms": 3_600_000});
    let (status, body) = match token {
        Some(t) => srv.call_as(t, Method::POST, "/v1/jobs", Some(spec)).await,
        None => srv.post("/v1/jobs", spec).await,
    };
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("id").to_string()
}

async fn a_waiting_stream_gets_a_new_event_at_once(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // On PostgreSQL the stream is read on another node than the one that writes.
    let reader = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let watch = reader.as_ref().unwrap_or(&srv);
    // Three times, so that the safety-net poll (every 30 s) cannot pass for the signal.
    for _ in 0..3 {
        let id = waiting_job(&srv, None).await;
        let mut stream = Stream::open(watch, &format!("/v1/jobs/{id}/events"), None).await.expect("a stream");
        assert_eq!(stream.next(DEADLINE).await.expect("the log so far").kind, "scheduled");
        // The stream read its log just now and waits; the cancel is committed elsewhere.
        let (status, body) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cancelled = Instant::now();
        let event = stream.next(Duration::from_secs(2)).await.expect("the new event");
        assert_eq!(event.kind, "cancelled");
        assert!(cancelled.elapsed() < Duration::from_secs(2), "woken by the commit, not by the safety poll");
        assert!(stream.next(DEADLINE).await.is_none(), "closed after the final event");
    }
    // A run's stream is woken by the run's own log.
    let (status, body) = srv
        .post(
            "/v1/workflows",
            json!({"name": "long", "nodes": [{"id": "wait", "kind": "sleep", "input": {"ms": 600_000},
                    "timeout_ms": 700_000}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = srv.post("/v1/runs", json!({"workflow": "long"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = body["id"].as_str().expect("id").to_string();
    let mut stream = Stream::open(watch, &format!("/v1/runs/{run}/events"), None).await.expect("a stream");
    // Its node job started (a copy of the job's event in the run's log); the run waits.
    while stream.next(DEADLINE).await.expect("the log so far").kind != "started" {}
    let (status, body) = srv.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cancelled = Instant::now();
    let mut last = String::new();
    while let Some(e) = stream.next(Duration::from_secs(2)).await {
        last = e.kind;
    }
    assert_eq!(last, "run_finished");
    assert!(cancelled.elapsed() < Duration::from_secs(2), "woken by the commit, not by the safety poll");
    if let Some(reader) = reader {
        reader.stop().await;
    }
    srv.stop().await;
}

fn assert_too_many(refused: Result<Stream, (StatusCode, Option<String>, Value)>, limit: &str) {
    let Err((status, retry, body)) = refused else { panic!("a stream past {limit} was opened") };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry.as_deref(), Some("1"), "429 carries Retry-After");
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(limit)), "names {limit}: {body}");
}

async fn streams_are_capped_per_token_and_per_node(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| {
        cfg.sse_max_streams = 3;
        cfg.sse_max_streams_per_token = 2;
        // A client that went away is noticed at the next keep-alive.
        cfg.sse_keep_alive_ms = 50;
    })
    .await;
    let (_, ann) = srv.token("ws", "ann", Role::Submitter).await;
    let (_, bob) = srv.token("ws", "bob", Role::Viewer).await;
    let id = waiting_job(&srv, Some(&ann)).await;
    let path = format!("/v1/jobs/{id}/events");
    let mut ann_streams = Vec::new();
    for _ in 0..2 {
        ann_streams.push(Stream::open(&srv, &path, Some(&ann)).await.expect("within the per-token cap"));
    }
    assert_too_many(Stream::open(&srv, &path, Some(&ann)).await, "sse_max_streams_per_token");
    let _bob1 = Stream::open(&srv, &path, Some(&bob)).await.expect("another token: its own cap, the node's third");
    assert_too_many(Stream::open(&srv, &path, Some(&bob)).await, "sse_max_streams");
    // A plain JSON read is no stream and is never refused.
    let (status, _) = srv.call_as(&bob, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    // A stream that ends gives its slot back.
    drop(ann_streams.pop());
    let mut again = poll("the closed stream's slot", async || Stream::open(&srv, &path, Some(&ann)).await.ok()).await;
    assert_eq!(again.next(DEADLINE).await.expect("its log").kind, "scheduled");
    srv.stop().await;
}

async fn a_stream_ends_when_its_token_is_revoked(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // On PostgreSQL the stream is on another node than the revocation.
    let reader = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let watch = reader.as_ref().unwrap_or(&srv);
    let (_, admin) = srv.token("ws", "root", Role::Admin).await;
    let (viewer_id, viewer) = srv.token("ws", "eve", Role::Viewer).await;
    let (_, other) = srv.token("ws", "amy", Role::Viewer).await;
    let id = waiting_job(&srv, Some(&admin)).await;
    let path = format!("/v1/jobs/{id}/events");
    let mut doomed = Stream::open(watch, &path, Some(&viewer)).await.expect("a stream");
    let mut kept = Stream::open(watch, &path, Some(&other)).await.expect("a stream");
    assert_eq!(doomed.next(DEADLINE).await.expect("its log").kind, "scheduled");
    assert_eq!(kept.next(DEADLINE).await.expect("its log").kind, "scheduled");

    let (status, body) = srv.call_as(&admin, Method::DELETE, &format!("/v1/tokens/{viewer_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let last = doomed.next(DEADLINE).await.expect("a final event");
    assert_eq!(last.kind, "revoked");
    let data: Value = serde_json::from_str(&last.data).expect("JSON");
    assert_eq!(data["error"]["code"], "unauthenticated", "{data}");
    assert!(doomed.next(DEADLINE).await.is_none(), "then the stream closes");
    let Err((status, ..)) = Stream::open(watch, &path, Some(&viewer)).await else { panic!("a revoked token streams") };
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Another token's stream goes on, and still gets the job's events.
    let (status, body) = srv.call_as(&admin, Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(kept.next(DEADLINE).await.expect("the new event").kind, "cancelled");
    if let Some(reader) = reader {
        reader.stop().await;
    }
    srv.stop().await;
}

async fn an_open_mode_stream_ends_when_the_first_token_is_created(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // On PostgreSQL the stream is on another node than the token's creation.
    let reader = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let watch = reader.as_ref().unwrap_or(&srv);
    let id = waiting_job(&srv, None).await;
    let path = format!("/v1/jobs/{id}/events");
    let mut open = Stream::open(watch, &path, None).await.expect("a stream without a token, in open mode");
    assert_eq!(open.next(DEADLINE).await.expect("its log").kind, "scheduled");
    // The first token closes the store: a caller without one may no longer read.
    let (_, admin) = srv.token("default", "root", Role::Admin).await;
    let last = open.next(DEADLINE).await.expect("a final event");
    assert_eq!(last.kind, "revoked");
    assert!(open.next(DEADLINE).await.is_none(), "then the stream closes");
    let Err((status, ..)) = Stream::open(watch, &path, None).await else { panic!("streams without a token") };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut with_token = Stream::open(watch, &path, Some(&admin)).await.expect("a stream with the token");
    assert_eq!(with_token.next(DEADLINE).await.expect("its log").kind, "scheduled");
    if let Some(reader) = reader {
        reader.stop().await;
    }
    srv.stop().await;
}

async fn metrics_name_no_workflow_and_no_workspace(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, acme) = srv.token("wsacmeprivate", "ann", Role::Submitter).await;
    let (_, globex) = srv.token("wsglobexprivate", "bob", Role::Submitter).await;
    for (token, name) in [(&acme, "acme-secret-merger"), (&globex, "globex-hidden-flow")] {
        let def = json!({"name": name, "nodes": [{"id": "a", "kind": "noop"}, {"id": "b", "kind": "fail",
            "input": {"type": "validation"}, "max_attempts": 1, "depends_on": ["a"]}]});
        let (status, body) = srv.call_as(token, Method::POST, "/v1/workflows", Some(def)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = srv.call_as(token, Method::POST, "/v1/runs", Some(json!({"workflow": name}))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let run = body["id"].as_str().expect("id").to_string();
        poll("the run to end", async || {
            let (_, r) = srv.call_as(token, Method::GET, &format!("/v1/runs/{run}"), None).await;
            (r["state"] != "running").then_some(())
        })
        .await;
        // A node may only name a configured queue (a stored name would become a label).
        let def = json!({"name": name, "nodes": [{"id": "a", "kind": "noop", "queue": "acme-private-queue"}]});
        let got = srv.call_as(token, Method::POST, "/v1/workflows", Some(def)).await;
        crate::harness::assert_error(&got, StatusCode::BAD_REQUEST, "unknown_queue", Some("nodes[0].queue"));
    }
    let (status, text) = srv.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("ferry_runs_started_total"), "runs are still counted: {text}");
    for secret in ["acme-secret-merger", "globex-hidden-flow", "wsacmeprivate", "wsglobexprivate", "acme-private-queue"]
    {
        assert!(!text.contains(secret), "/metrics names `{secret}`:\n{text}");
    }
    srv.stop().await;
}
