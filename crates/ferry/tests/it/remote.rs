//! Promise: a kind a remote worker registers is a kind like any other. Its jobs are
//! leased by the worker's session over HTTP (a long poll that a submission answers),
//! their results are fenced by the attempt (a late or stale one changes nothing), their
//! failures retry or die by the job's policy and the worker's word, a cancel or a timeout
//! reaches the session at its next heartbeat, a session that stops calling loses its
//! jobs to another, a released job comes back uncounted, a workflow node may be a remote
//! kind, and every node accepts a kind registered on any of them.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, poll};
use ferry_core::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    a_remote_kind_runs_through_a_session,
    a_lease_waits_for_a_submission,
    a_failure_retries_or_dies_by_the_workers_word,
    a_cancel_reaches_the_session_and_a_late_result_is_refused,
    a_session_that_stops_calling_loses_its_jobs_to_another,
    a_session_that_hangs_up_on_its_lease_ends_too,
    a_released_job_comes_back_uncounted,
    a_complete_may_lease_and_a_new_lease_ends_the_waiting_one,
    a_timeout_stops_the_attempt_and_names_it,
    a_workflow_node_may_be_a_remote_kind,
    a_queue_of_remote_kinds_pauses_like_any,
    bad_calls_are_refused_and_change_nothing,
    an_attempt_writes_at_most_a_thousand_events,
    only_workers_and_operators_serve,
);

/// Opens a session serving `kinds` (kind, queue) with `concurrency` slots; its id.
async fn open(srv: &TestServer, kinds: &[(&str, &str)], concurrency: usize) -> String {
    let kinds: Vec<Value> = kinds.iter().map(|(k, q)| json!({"kind": k, "queue": q})).collect();
    let body = json!({"protocol": 1, "name": "test-worker", "concurrency": concurrency, "kinds": kinds});
    let (status, got) = srv.post("/v1/workers/sessions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{got}");
    assert_eq!(got["protocol"], 1);
    assert_eq!(got["session_timeout_ms"], srv.cfg().lease_ms, "a session lives as long as a lease");
    got["session"].as_str().expect("a session id").to_string()
}

/// Leases up to `max` jobs, waiting up to `wait_ms`.
async fn lease(srv: &TestServer, session: &str, max: usize, wait_ms: u64) -> Vec<Value> {
    let (status, got) =
        srv.post(&format!("/v1/workers/sessions/{session}/lease"), json!({"max": max, "wait_ms": wait_ms})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    got["jobs"].as_array().expect("jobs").clone()
}

/// Leases until a job comes (each call waits up to 10 s for one).
async fn lease_one(srv: &TestServer, session: &str) -> Value {
    poll("a job to lease", async || lease(srv, session, 1, 10_000).await.into_iter().next()).await
}

/// Sends one result; whether it was accepted.
async fn complete(srv: &TestServer, session: &str, result: Value) -> (StatusCode, Value) {
    srv.post(&format!("/v1/workers/sessions/{session}/complete"), json!({"results": [result]})).await
}

async fn accepted(srv: &TestServer, session: &str, result: Value) -> bool {
    let (status, got) = complete(srv, session, result).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    got["results"][0]["accepted"].as_bool().expect("accepted")
}

/// Heartbeats until the session is told to stop `id`; the reason.
async fn told_to_stop(srv: &TestServer, session: &str, id: &str) -> String {
    poll("the session to be told to stop the job", async || {
        let (status, got) = srv.post(&format!("/v1/workers/sessions/{session}/heartbeat"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        let cancel = got["cancel"].as_array().expect("cancel").clone();
        cancel.into_iter().find(|c| c["id"] == id).map(|c| c["reason"].as_str().expect("reason").to_string())
    })
    .await
}

async fn a_remote_kind_runs_through_a_session(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("resize", "images")], 2).await;
    let id = srv.submit(json!({"kind": "resize", "input": {"url": "a.png", "width": 200}})).await;
    assert_eq!(srv.job(&id).await["queue"], "images", "a remote kind's job goes to its queue");

    let job = lease_one(&srv, &session).await;
    assert_eq!(job["id"], id.as_str());
    assert_eq!(
        (job["kind"].as_str(), job["queue"].as_str(), job["attempt"].as_u64()),
        (Some("resize"), Some("images"), Some(1))
    );
    assert_eq!(job["input"], json!({"url": "a.png", "width": 200}));
    assert_eq!(job["workspace"], "default");
    assert!(job["timeout_ms"].as_u64().is_some_and(|t| t > 0), "{job}");
    assert_eq!(srv.job(&id).await["state"], "running");

    let events = json!({"events": [
        {"id": id, "attempt": 1, "progress": {"done": 1, "total": 2}},
        {"id": id, "attempt": 1, "log": "half way"},
    ]});
    let (status, got) = srv.post(&format!("/v1/workers/sessions/{session}/events"), events).await;
    assert_eq!((status, got["accepted"].clone()), (StatusCode::OK, json!([true, true])), "{got}");

    assert!(accepted(&srv, &session, json!({"id": id, "attempt": 1, "output": {"path": "a_200.png"}})).await);
    let done = srv.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(
        (done["state"].as_str(), &done["output"]),
        (Some("succeeded"), &json!({"path": "a_200.png"})),
        "{done:#}"
    );
    let events = srv.events(&id).await;
    let progress = events.iter().find(|e| e["type"] == "progress").expect("a progress event");
    assert_eq!(progress["data"]["progress"], json!({"done": 1, "total": 2}));
    let log = events.iter().find(|e| e["type"] == "log").expect("a log event");
    assert_eq!(log["data"]["line"], "half way");
    let (status, sessions) = srv.get("/v1/workers/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions["sessions"][0]["kinds"], json!({"resize": "images"}), "{sessions}");
    let (status, _) = srv
        .client()
        .delete(format!("{}/v1/workers/sessions/{session}", srv.url()))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, got) = srv.post(&format!("/v1/workers/sessions/{session}/heartbeat"), json!({})).await;
    assert_error(&(status, got), StatusCode::NOT_FOUND, "unknown_session", Some("session"));
    srv.stop().await;
}

async fn a_lease_waits_for_a_submission(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("thumb", "remote")], 1).await;
    assert!(lease(&srv, &session, 1, 0).await.is_empty(), "nothing to lease yet");
    // The lease waits up to 25 s: only the submission can end it with a job.
    let waiting = {
        let (url, client, session) = (srv.url().to_string(), srv.client().clone(), session.clone());
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/workers/sessions/{session}/lease"))
                .json(&json!({"max": 4, "wait_ms": 25_000}))
                .send()
                .await
                .expect("the lease answers");
            r.json::<Value>().await.expect("JSON")
        })
    };
    // The lease is waiting once the session reports no job running and the server took
    // the call; a submission made before it would be leased as well, so no race matters.
    let id = srv.submit(json!({"kind": "thumb", "input": {}})).await;
    let got = waiting.await.expect("the lease task");
    assert_eq!(got["jobs"].as_array().map(|j| j.len()), Some(1), "{got}");
    assert_eq!(got["jobs"][0]["id"], id.as_str());
    srv.stop().await;
}

async fn a_failure_retries_or_dies_by_the_workers_word(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("flaky", "remote")], 1).await;
    let id = srv.submit(json!({"kind": "flaky", "max_attempts": 3, "backoff": {"initial_ms": 10, "max_ms": 10}})).await;
    let first = lease_one(&srv, &session).await;
    let error = json!({"type": "ConnectionError", "message": "the bucket did not answer"});
    assert!(accepted(&srv, &session, json!({"id": id, "attempt": first["attempt"], "error": error})).await);
    let second = lease_one(&srv, &session).await;
    assert_eq!((second["id"].as_str(), second["attempt"].as_u64()), (Some(id.as_str()), Some(2)), "retried: {second}");
    let job = srv.job(&id).await;
    let err = &attempts(&job)[0]["error"];
    assert_eq!(
        (err["type"].as_str(), err["message"].as_str()),
        (Some("task"), Some("ConnectionError: the bucket did not answer"))
    );
    let fatal = json!({"type": "validation", "message": "width must be positive", "retryable": false});
    assert!(accepted(&srv, &session, json!({"id": id, "attempt": 2, "error": fatal})).await);
    let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
    assert_eq!(dead["state"], "dead", "not retried: {dead:#}");
    assert_eq!(
        (dead["error"]["type"].as_str(), dead["error"]["retryable"].as_bool()),
        (Some("validation"), Some(false))
    );
    // A result for the ended attempt changes nothing.
    assert!(!accepted(&srv, &session, json!({"id": id, "attempt": 2, "output": {}})).await);
    assert_eq!(srv.job(&id).await["state"], "dead");
    srv.stop().await;
}

async fn a_cancel_reaches_the_session_and_a_late_result_is_refused(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("render", "remote")], 1).await;
    let id = srv.submit(json!({"kind": "render", "input": {}})).await;
    let job = lease_one(&srv, &session).await;
    let (status, got) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(told_to_stop(&srv, &session, &id).await, "cancelled");
    assert!(!accepted(&srv, &session, json!({"id": id, "attempt": job["attempt"], "output": {"late": true}})).await);
    let job = srv.wait_state(&id, &["cancelled", "succeeded"]).await;
    assert_eq!((job["state"].as_str(), job["output"].is_null()), (Some("cancelled"), true), "{job:#}");
    srv.stop().await;
}

async fn a_session_that_stops_calling_loses_its_jobs_to_another(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let gone = open(&srv, &[("encode", "video")], 1).await;
    let id = srv.submit(json!({"kind": "encode", "input": {}, "backoff": {"initial_ms": 10, "max_ms": 10}})).await;
    let first = lease_one(&srv, &gone).await;
    assert_eq!(first["attempt"], 1);
    // `gone` never calls again; `next` leases until the job comes back to it.
    let next = open(&srv, &[("encode", "video")], 1).await;
    let again = poll("the job to come back to the other session", async || {
        let (_, got) = srv.post(&format!("/v1/workers/sessions/{next}/heartbeat"), json!({})).await;
        assert!(got["cancel"].is_array(), "{got}");
        lease(&srv, &next, 1, 2_000).await.into_iter().next()
    })
    .await;
    assert_eq!((again["id"].as_str(), again["attempt"].as_u64()), (Some(id.as_str()), Some(2)));
    let job = srv.job(&id).await;
    assert_eq!(attempts(&job)[0]["error"]["type"], "worker_lost", "{job:#}");
    let (status, got) = complete(&srv, &gone, json!({"id": id, "attempt": 1, "output": {}})).await;
    assert_error(&(status, got), StatusCode::NOT_FOUND, "unknown_session", Some("session"));
    assert!(accepted(&srv, &next, json!({"id": id, "attempt": 2, "output": {"ok": 1}})).await);
    assert_eq!(srv.wait_state(&id, &["succeeded", "dead"]).await["state"], "succeeded");
    srv.stop().await;
}

async fn a_session_that_hangs_up_on_its_lease_ends_too(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let gone = open(&srv, &[("encode", "video")], 2).await;
    let id = srv.submit(json!({"kind": "encode", "input": {}, "backoff": {"initial_ms": 10, "max_ms": 10}})).await;
    let first = lease_one(&srv, &gone).await;
    // A worker killed while its next lease call waits: the call's connection closes.
    let hasty = reqwest::Client::builder().timeout(std::time::Duration::from_millis(300)).build().expect("a client");
    let cut = hasty
        .post(format!("{}/v1/workers/sessions/{gone}/lease", srv.url()))
        .json(&json!({"wait_ms": 25_000}))
        .send()
        .await;
    assert!(cut.is_err_and(|e| e.is_timeout()), "the call was cut while it waited");
    let next = open(&srv, &[("encode", "video")], 1).await;
    let again = poll("the job to come back to the other session", async || {
        lease(&srv, &next, 1, 2_000).await.into_iter().next()
    })
    .await;
    assert_eq!(
        (again["id"].as_str(), again["attempt"].as_u64()),
        (Some(id.as_str()), Some(first["attempt"].as_u64().unwrap() + 1))
    );
    assert_eq!(attempts(&srv.job(&id).await)[0]["error"]["type"], "worker_lost");
    let (status, got) = srv.post(&format!("/v1/workers/sessions/{gone}/heartbeat"), json!({})).await;
    assert_error(&(status, got), StatusCode::NOT_FOUND, "unknown_session", Some("session"));
    srv.stop().await;
}

async fn a_released_job_comes_back_uncounted(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("index", "remote")], 1).await;
    // One attempt only: a release that counted would leave the job dead.
    let id = srv.submit(json!({"kind": "index", "max_attempts": 1})).await;
    let first = lease_one(&srv, &session).await;
    assert!(accepted(&srv, &session, json!({"id": id, "attempt": first["attempt"], "release": true})).await);
    let again = lease_one(&srv, &session).await;
    assert_eq!(again["id"], id.as_str(), "the released job is leased again");
    assert!(accepted(&srv, &session, json!({"id": id, "attempt": again["attempt"], "output": 7})).await);
    let job = srv.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!((job["state"].as_str(), &job["output"]), (Some("succeeded"), &json!(7)), "{job:#}");
    srv.stop().await;
}

async fn a_complete_may_lease_and_a_new_lease_ends_the_waiting_one(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("batchy", "remote")], 2).await;
    let ids = srv.submit_batch(vec![json!({"kind": "batchy"}); 3]).await;
    let first = lease(&srv, &session, 2, 10_000).await;
    assert!(!first.is_empty(), "leased");
    // Ending what it holds, the session leases the rest in the same call.
    let results: Vec<serde_json::Value> =
        first.iter().map(|j| json!({"id": j["id"], "attempt": j["attempt"], "output": 1})).collect();
    let mut left = 3 - first.len();
    let (status, got) = srv
        .post(
            &format!("/v1/workers/sessions/{session}/complete"),
            json!({"results": results, "lease": {"max": 2, "wait_ms": 10_000}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(got["results"].as_array().is_some_and(|r| r.iter().all(|r| r["accepted"] == true)), "{got}");
    let more = got["jobs"].as_array().expect("jobs leased with the results").clone();
    assert!(!more.is_empty() && more.len() <= left, "{got}");
    left -= more.len();
    for j in &more {
        assert!(accepted(&srv, &session, json!({"id": j["id"], "attempt": j["attempt"], "output": 2})).await);
    }
    if left > 0 {
        let last = lease_one(&srv, &session).await;
        assert!(accepted(&srv, &session, json!({"id": last["id"], "attempt": last["attempt"], "output": 3})).await);
    }
    for id in &ids {
        assert_eq!(srv.wait_state(id, &["succeeded", "dead"]).await["state"], "succeeded");
    }
    // Nothing to lease: a call waits; a second call ends it with nothing.
    let waiting = {
        let (url, client, session) = (srv.url().to_string(), srv.client().clone(), session.clone());
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/workers/sessions/{session}/lease"))
                .json(&json!({"wait_ms": 30_000}))
                .send()
                .await
                .expect("the lease answers");
            r.json::<Value>().await.expect("JSON")
        })
    };
    let ended = poll("the first call to end", async || {
        let _ = lease(&srv, &session, 1, 0).await;
        waiting.is_finished().then_some(())
    })
    .await;
    let _: () = ended;
    assert_eq!(waiting.await.expect("the first call")["jobs"], json!([]));
    srv.stop().await;
}

async fn a_timeout_stops_the_attempt_and_names_it(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("slow", "remote")], 1).await;
    let id = srv.submit(json!({"kind": "slow", "timeout_ms": 300, "max_attempts": 1})).await;
    let job = lease_one(&srv, &session).await;
    assert_eq!(job["timeout_ms"], 300);
    assert_eq!(told_to_stop(&srv, &session, &id).await, "timeout");
    let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
    assert_eq!(dead["error"]["type"], "timeout", "{dead:#}");
    assert!(!accepted(&srv, &session, json!({"id": id, "attempt": 1, "output": {}})).await, "too late");
    srv.stop().await;
}

/// An operator pauses a queue of remote kinds like any other: its jobs wait.
async fn a_queue_of_remote_kinds_pauses_like_any(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("crop", "pics")], 1).await;
    let (status, got) = srv.put("/v1/queues/pics", json!({"paused": true})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    // A pause holds from its commit for every claim (the claim statements read it).
    let later = srv.submit(json!({"kind": "crop"})).await;
    assert!(lease(&srv, &session, 1, 1_500).await.is_empty(), "paused");
    assert_eq!(srv.job(&later).await["state"], "queued");
    let (status, _) = srv.put("/v1/queues/pics", json!({"paused": false})).await;
    assert_eq!(status, StatusCode::OK);
    let got = poll("the resumed queue's job", async || {
        lease(&srv, &session, 1, 2_000).await.into_iter().find(|j| j["id"] == later.as_str())
    })
    .await;
    assert_eq!(got["kind"], "crop");
    let (status, got) = srv.put("/v1/queues/nowhere", json!({"paused": true})).await;
    assert_error(&(status, got), StatusCode::NOT_FOUND, "not_found", None);
    srv.stop().await;
}

async fn a_workflow_node_may_be_a_remote_kind(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("score", "remote")], 2).await;
    let def = json!({"name": "scored", "nodes": [
        {"id": "score", "kind": "score", "input": {"text": "{{ input.text }}"}},
        {"id": "keep", "kind": "noop", "depends_on": ["score"], "input": {"score": "{{ nodes.score.output.score }}"}}
    ]});
    let (status, got) = srv.post("/v1/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "{got}");
    let (status, run) = srv.post("/v1/runs", json!({"workflow": "scored", "input": {"text": "fine"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let job = lease_one(&srv, &session).await;
    assert_eq!((job["input"].clone(), job["run"].as_str()), (json!({"text": "fine"}), run["id"].as_str()));
    assert!(
        accepted(&srv, &session, json!({"id": job["id"], "attempt": job["attempt"], "output": {"score": 0.9}})).await
    );
    let id = run["id"].as_str().expect("a run id");
    let done = poll("the run to end", async || {
        let (_, r) = srv.get(&format!("/v1/runs/{id}")).await;
        ["succeeded", "failed"].contains(&r["state"].as_str().unwrap_or("")).then_some(r)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let keep = done["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == "keep").expect("keep").clone();
    assert_eq!(keep["output"], json!({"score": 0.9}), "{keep:#}");
    srv.stop().await;
}

async fn bad_calls_are_refused_and_change_nothing(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, got) = srv.post("/v1/jobs", json!({"kind": "resize"})).await;
    assert_error(&(status, got), StatusCode::BAD_REQUEST, "unknown_kind", Some("kind"));
    let refusals = [
        (json!({"protocol": 2, "kinds": [{"kind": "a"}]}), StatusCode::BAD_REQUEST, "unsupported_protocol", "protocol"),
        (json!({"protocol": 1, "kinds": []}), StatusCode::BAD_REQUEST, "invalid_field", "kinds"),
        (
            json!({"protocol": 1, "concurrency": 0, "kinds": [{"kind": "a"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "concurrency",
        ),
        (
            json!({"protocol": 1, "concurrency": 1001, "kinds": [{"kind": "a"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "concurrency",
        ),
        (
            json!({"protocol": 1, "kinds": [{"kind": "Bad Name"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "kinds[0].kind",
        ),
        (
            json!({"protocol": 1, "kinds": [{"kind": "a"}, {"kind": "a"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "kinds[1].kind",
        ),
        (json!({"protocol": 1, "kinds": [{"kind": "noop"}]}), StatusCode::CONFLICT, "kind_conflict", "kinds[0].kind"),
        (
            json!({"protocol": 1, "kinds": [{"kind": "a", "queue": "default"}]}),
            StatusCode::CONFLICT,
            "queue_conflict",
            "kinds[0].queue",
        ),
        (
            json!({"protocol": 1, "kinds": [{"kind": "a"}], "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "extra",
        ),
    ];
    for (body, status, code, field) in refusals {
        let got = srv.post("/v1/workers/sessions", body.clone()).await;
        assert_error(&got, status, code, Some(field));
    }
    // Nothing was registered by the refusals.
    let (status, got) = srv.post("/v1/jobs", json!({"kind": "a"})).await;
    assert_error(&(status, got), StatusCode::BAD_REQUEST, "unknown_kind", Some("kind"));
    assert_eq!(srv.get("/v1/workers/sessions").await.1["sessions"], json!([]));

    let session = open(&srv, &[("resize", "images")], 1).await;
    let (status, got) = srv.post("/v1/jobs", json!({"kind": "resize", "queue": "default"})).await;
    assert_error(&(status, got), StatusCode::BAD_REQUEST, "unknown_queue", Some("queue"));
    let got = srv.post("/v1/workers/sessions/nope/lease", json!({})).await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_session", Some("session"));
    let got = srv.post(&format!("/v1/workers/sessions/{session}/lease"), json!({"wait_ms": 30_001})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("wait_ms"));
    // `null` is an output like any other.
    let nothing = srv.submit(json!({"kind": "resize"})).await;
    let job = lease_one(&srv, &session).await;
    assert!(accepted(&srv, &session, json!({"id": nothing, "attempt": job["attempt"], "output": null})).await);
    let done = srv.wait_state(&nothing, &["succeeded", "dead"]).await;
    assert_eq!((done["state"].as_str(), &done["output"]), (Some("succeeded"), &Value::Null), "{done:#}");
    let id = srv.submit(json!({"kind": "resize"})).await;
    let job = lease_one(&srv, &session).await;
    let both = json!({"id": id, "attempt": job["attempt"], "output": 1, "error": {"type": "x", "message": "y"}});
    assert_error(&complete(&srv, &session, both).await, StatusCode::BAD_REQUEST, "invalid_field", Some("results[0]"));
    let neither = json!({"id": id, "attempt": job["attempt"]});
    assert_error(
        &complete(&srv, &session, neither).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("results[0]"),
    );
    let events = json!({"events": [{"id": id, "attempt": 1, "log": "x".repeat(4097)}]});
    let got = srv.post(&format!("/v1/workers/sessions/{session}/events"), events).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("events[0].log"));
    // The refusals left the attempt running, its job's log untouched.
    assert_eq!(srv.job(&id).await["state"], "running");
    assert!(!srv.event_types(&id).await.iter().any(|t| t == "log"));
    assert!(accepted(&srv, &session, json!({"id": id, "attempt": job["attempt"], "output": 1})).await);
    srv.stop().await;
}

async fn an_attempt_writes_at_most_a_thousand_events(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let session = open(&srv, &[("chatty", "remote")], 1).await;
    let id = srv.submit(json!({"kind": "chatty"})).await;
    let job = lease_one(&srv, &session).await;
    let batch = |n: usize| {
        let events: Vec<Value> =
            (0..n).map(|i| json!({"id": id, "attempt": job["attempt"], "log": format!("line {i}")})).collect();
        json!({"events": events})
    };
    let path = format!("/v1/workers/sessions/{session}/events");
    for _ in 0..9 {
        assert_eq!(srv.post(&path, batch(100)).await.0, StatusCode::OK);
    }
    assert_eq!(srv.post(&path, batch(99)).await.0, StatusCode::OK, "999 events");
    assert_eq!(srv.post(&path, batch(1)).await.0, StatusCode::OK, "the thousandth");
    assert_error(&srv.post(&path, batch(1)).await, StatusCode::TOO_MANY_REQUESTS, "event_limit", Some("events"));
    let logs = srv.event_types(&id).await.iter().filter(|t| *t == "log").count();
    assert_eq!(logs, 1000);
    srv.stop().await;
}

async fn only_workers_and_operators_serve(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, worker) = srv.token("default", "w", Role::Worker).await;
    let (_, submitter) = srv.token("default", "s", Role::Submitter).await;
    let (_, operator) = srv.token("ops", "o", Role::Operator).await;
    let body = json!({"protocol": 1, "kinds": [{"kind": "resize", "queue": "images"}]});
    let got = srv.call_as(&submitter, reqwest::Method::POST, "/v1/workers/sessions", Some(body.clone())).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", None);
    let (status, opened) =
        srv.call_as(&worker, reqwest::Method::POST, "/v1/workers/sessions", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let (status, _) = srv.call_as(&operator, reqwest::Method::POST, "/v1/workers/sessions", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    // A worker token does nothing else.
    let got = srv.call_as(&worker, reqwest::Method::GET, "/v1/jobs", None).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", None);
    let got = srv.call_as(&worker, reqwest::Method::POST, "/v1/jobs", Some(json!({"kind": "resize"}))).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", None);
    // Nor may an admin hand one out.
    let (_, admin) = srv.token("default", "a", Role::Admin).await;
    let got =
        srv.call_as(&admin, reqwest::Method::POST, "/v1/tokens", Some(json!({"user": "x", "role": "worker"}))).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some("role"));
    // The submitter's job of the registered kind is leased by the worker's session.
    let (status, job) =
        srv.call_as(&submitter, reqwest::Method::POST, "/v1/jobs", Some(json!({"kind": "resize"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let session = opened["session"].as_str().expect("session");
    let (status, got) = srv
        .call_as(
            &worker,
            reqwest::Method::POST,
            &format!("/v1/workers/sessions/{session}/lease"),
            Some(json!({"wait_ms": 10_000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    srv.stop().await;
}

/// On PostgreSQL, a kind registered through one node is accepted by another at once, and
/// its jobs go to the node where a session serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_accepts_a_kind_registered_on_any() {
    if !crate::harness::postgres_available().await {
        return;
    }
    let a = TestServer::start(Backend::Postgres).await;
    let b = a.peer(|_| {}).await;
    let session = open(&a, &[("ocr", "docs")], 1).await;
    let id = b.submit(json!({"kind": "ocr", "input": {"page": 3}})).await;
    assert_eq!(b.job(&id).await["queue"], "docs");
    let job = lease_one(&a, &session).await;
    assert_eq!(job["id"], id.as_str());
    assert!(accepted(&a, &session, json!({"id": id, "attempt": job["attempt"], "output": {"text": "…"}})).await);
    assert_eq!(b.wait_state(&id, &["succeeded", "dead"]).await["state"], "succeeded");
    b.stop().await;
    a.stop().await;
}
