//! Workspaces share queues but cannot stop each other's work, and a server that has had
//! a token stays closed: a workspace admin pauses only its own jobs on a queue (at once,
//! on every node), sees only its own counts, and cannot change the queue itself (the
//! operator's); revoking every token never reopens the server, only `ferry token reopen`
//! on the store does.

use crate::harness::{Backend, TestServer, assert_error, both, poll};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    a_workspace_pause_holds_back_only_that_workspace_jobs,
    a_workspace_rate_holds_back_only_that_workspace_jobs,
    a_workspace_sees_only_its_own_queue_counts,
    queue_wide_settings_and_operator_tokens_are_the_operators,
    an_operator_pause_stops_every_workspace,
    revoking_every_token_keeps_the_server_closed_until_reopened,
);

/// Submits `n` noop jobs to `queue` as `token`; their ids.
async fn submit(srv: &TestServer, token: &str, queue: &str, n: usize) -> Vec<String> {
    let jobs: Vec<Value> = (0..n).map(|_| json!({"kind": "noop", "queue": queue})).collect();
    let (status, body) = srv.call_as(token, Method::POST, "/v1/jobs/batch", Some(json!({"jobs": jobs}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id").to_string()).collect()
}

async fn state(srv: &TestServer, token: &str, id: &str) -> String {
    let (status, job) = srv.call_as(token, Method::GET, &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job["state"].as_str().expect("state").to_string()
}

async fn wait_succeeded(srv: &TestServer, token: &str, ids: &[String]) {
    for id in ids {
        poll(&format!("job {id} to succeed"), async || (state(srv, token, id).await == "succeeded").then_some(()))
            .await;
    }
}

/// The first attempts' start times of these jobs, in microseconds, sorted.
async fn start_times(srv: &TestServer, token: &str, ids: &[String]) -> Vec<i64> {
    let mut at = Vec::new();
    for id in ids {
        let (_, job) = srv.call_as(token, Method::GET, &format!("/v1/jobs/{id}"), None).await;
        let t = job["attempts"][0]["started_at"].as_str().expect("started_at");
        at.push(chrono::DateTime::parse_from_rfc3339(t).expect("time").timestamp_micros());
    }
    at.sort();
    at
}

/// One queue of `GET /v1/queues` as `token` (with `query`).
async fn queue_view(srv: &TestServer, token: &str, query: &str, name: &str) -> Value {
    let (status, body) = srv.call_as(token, Method::GET, &format!("/v1/queues{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["queues"].as_array().expect("queues").iter().find(|q| q["name"] == name).cloned().expect("the queue")
}

async fn a_workspace_pause_holds_back_only_that_workspace_jobs(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, a) = srv.token("team-a", "alice", Role::Admin).await;
    let (_, b) = srv.token("team-b", "bob", Role::Admin).await;
    let (_, b_viewer) = srv.token("team-b", "vic", Role::Viewer).await;
    // On PostgreSQL the pause goes through another node, which runs no workers: it must
    // hold on this one, whose dispatchers claim.
    let api = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    let (status, body) =
        api.as_ref().unwrap_or(&srv).call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"paused": true}))).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"paused": true, "rate": null, "queue_paused": false})));
    // B's jobs first, so that A's can only run if the claims pass over B's.
    let b_jobs = submit(&srv, &b, "heavy", 3).await;
    let a_jobs = submit(&srv, &a, "heavy", 4).await;
    wait_succeeded(&srv, &a, &a_jobs).await;
    for id in &b_jobs {
        assert_eq!(state(&srv, &b, id).await, "queued", "B's paused job {id} was dispatched");
    }
    // What B sees of the queue: its own jobs and its own share, not the queue's settings.
    let heavy = queue_view(&srv, &b_viewer, "", "heavy").await;
    assert_eq!((&heavy["depth"], &heavy["running"], &heavy["workspace"]), (&json!(3), &json!(0), &json!("team-b")));
    assert_eq!(heavy["share"], json!({"paused": true, "rate": null, "queue_paused": false}), "{heavy}");
    assert!(heavy.get("settings").is_none(), "{heavy}");
    let heavy = queue_view(&srv, &a, "", "heavy").await;
    assert_eq!((&heavy["depth"], &heavy["share"]["paused"]), (&json!(0), &json!(false)), "A's share is not paused");
    // Resumed, B's jobs run.
    let (status, body) = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"paused": false}))).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(false)), "{body}");
    wait_succeeded(&srv, &b, &b_jobs).await;
    if let Some(api) = api {
        api.stop().await;
    }
    srv.stop().await;
}

async fn a_workspace_rate_holds_back_only_that_workspace_jobs(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, a) = srv.token("team-a", "alice", Role::Admin).await;
    let (_, b) = srv.token("team-b", "bob", Role::Admin).await;
    let (status, body) = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"rate": 2}))).await;
    assert_eq!((status, body["rate"].as_f64(), &body["paused"]), (StatusCode::OK, Some(2.0), &json!(false)), "{body}");
    let got = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"rate": 0}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("rate"));
    assert_eq!(
        queue_view(&srv, &b, "", "heavy").await["share"]["rate"].as_f64(),
        Some(2.0),
        "the refusal changed nothing"
    );
    assert_eq!(queue_view(&srv, &a, "", "heavy").await["share"]["rate"], json!(null), "A's share has no rate");
    // B's jobs first, so that A's can only run at their own pace if claims pass over B's.
    let b_jobs = submit(&srv, &b, "heavy", 8).await;
    let a_jobs = submit(&srv, &a, "heavy", 4).await;
    wait_succeeded(&srv, &a, &a_jobs).await;
    let a_starts = start_times(&srv, &a, &a_jobs).await;
    assert!(a_starts[3] - a_starts[0] < 1_000_000, "A's jobs are not held at B's rate: {a_starts:?}");
    wait_succeeded(&srv, &b, &b_jobs).await;
    let b_starts = start_times(&srv, &b, &b_jobs).await;
    // A burst of 2 then 2 a second: 8 starts cannot take less than 3 s (slack: 0.5 s).
    let span = (b_starts[7] - b_starts[0]) as f64 / 1e6;
    assert!(span >= 2.5, "8 starts at 2/s took only {span} s");
    srv.stop().await;
}

async fn a_workspace_sees_only_its_own_queue_counts(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, operator) = srv.token("ops", "root", Role::Operator).await;
    let (_, a) = srv.token("team-a", "alice", Role::Submitter).await;
    let (_, b_viewer) = srv.token("team-b", "vic", Role::Viewer).await;
    // A: two jobs waiting for their time, one dead.
    let (status, _) = srv
        .call_as(
            &a,
            Method::POST,
            "/v1/jobs/batch",
            Some(json!({"jobs": [
                {"kind": "noop", "delay_ms": 600_000}, {"kind": "noop", "delay_ms": 600_000}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, dead) =
        srv.call_as(&a, Method::POST, "/v1/jobs", Some(json!({"kind": "fail", "input": {"retryable": false}}))).await;
    let dead = dead["id"].as_str().expect("id").to_string();
    poll("the failing job to die", async || (state(&srv, &a, &dead).await == "dead").then_some(())).await;

    let mine = queue_view(&srv, &a, "", "default").await;
    assert_eq!((&mine["scheduled"], &mine["dead"]), (&json!(2), &json!(1)), "{mine}");
    let theirs = queue_view(&srv, &b_viewer, "", "default").await;
    for count in ["depth", "running", "scheduled", "retrying", "dead"] {
        assert_eq!(theirs[count], 0, "B's viewer sees A's {count}: {theirs}");
    }
    // The operator sees every workspace's jobs and the queue's settings, or one workspace's.
    let all = queue_view(&srv, &operator, "", "default").await;
    assert_eq!((&all["scheduled"], &all["dead"]), (&json!(2), &json!(1)), "{all}");
    assert!(all.get("workspace").is_none() && all.get("share").is_none(), "{all}");
    let one = queue_view(&srv, &operator, "?workspace=team-b", "default").await;
    assert_eq!((&one["scheduled"], &one["workspace"]), (&json!(0), &json!("team-b")), "{one}");
    // Only the operator may look at another workspace.
    let got = srv.call_as(&b_viewer, Method::GET, "/v1/queues?workspace=team-a", None).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some("workspace"));
    let got = srv.call_as(&b_viewer, Method::GET, "/v1/queues?worksp=x", None).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("worksp"));
    srv.stop().await;
}

async fn queue_wide_settings_and_operator_tokens_are_the_operators(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (operator_id, operator) = srv.token("team-b", "root", Role::Operator).await;
    let (_, b) = srv.token("team-b", "bob", Role::Admin).await;
    for (field, value) in [("concurrency", json!(1)), ("max_depth", json!(5))] {
        let got = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({field: value, "paused": true}))).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some(field));
    }
    let got = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"color": 1}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("color"));
    let got = srv.call_as(&b, Method::PUT, "/v1/queues/heavy?workspace=team-a", Some(json!({"paused": true}))).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some("workspace"));
    // Nothing of the refused requests was written.
    let heavy = queue_view(&srv, &operator, "", "heavy").await;
    assert!(heavy.get("settings").is_none(), "{heavy}");
    assert_eq!(queue_view(&srv, &b, "", "heavy").await["share"]["paused"], false);
    // The operator changes the queue itself.
    let (status, body) =
        srv.call_as(&operator, Method::PUT, "/v1/queues/heavy", Some(json!({"concurrency": 1, "max_depth": 5}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["concurrency"], &body["max_depth"]), (&json!(1), &json!(5)));
    // Operator tokens come from the store only, and only an operator revokes one.
    for token in [&b, &operator] {
        let got = srv.call_as(token, Method::POST, "/v1/tokens", Some(json!({"user": "x", "role": "operator"}))).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some("role"));
    }
    let got = srv.call_as(&b, Method::DELETE, &format!("/v1/tokens/{operator_id}"), None).await;
    assert_error(&got, StatusCode::FORBIDDEN, "forbidden", Some("role"));
    let (status, _) = srv.call_as(&operator, Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK, "the operator token still works");
    let (status, _) = srv.call_as(&operator, Method::DELETE, &format!("/v1/tokens/{operator_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    srv.stop().await;
}

async fn an_operator_pause_stops_every_workspace(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, operator) = srv.token("ops", "root", Role::Operator).await;
    let (_, a) = srv.token("team-a", "alice", Role::Admin).await;
    let (_, b) = srv.token("team-b", "bob", Role::Admin).await;
    let (status, body) = srv.call_as(&operator, Method::PUT, "/v1/queues/heavy", Some(json!({"paused": true}))).await;
    assert_eq!((status, &body["paused"]), (StatusCode::OK, &json!(true)), "{body}");
    let held = [submit(&srv, &a, "heavy", 2).await, submit(&srv, &b, "heavy", 2).await];
    // Work on another queue runs meanwhile.
    let other = submit(&srv, &a, "default", 3).await;
    wait_succeeded(&srv, &a, &other).await;
    for (token, ids) in [(&a, &held[0]), (&b, &held[1])] {
        for id in ids {
            assert_eq!(state(&srv, token, id).await, "queued", "a job of a paused queue was dispatched");
        }
    }
    // A workspace sees that the queue, not its share, is paused, and cannot resume it.
    assert_eq!(
        queue_view(&srv, &b, "", "heavy").await["share"],
        json!({"paused": false, "rate": null, "queue_paused": true})
    );
    let (status, body) = srv.call_as(&b, Method::PUT, "/v1/queues/heavy", Some(json!({"paused": false}))).await;
    assert_eq!((status, &body["queue_paused"]), (StatusCode::OK, &json!(true)), "{body}");
    assert_eq!(state(&srv, &b, &held[1][0]).await, "queued");
    let (status, _) = srv.call_as(&operator, Method::PUT, "/v1/queues/heavy", Some(json!({"paused": false}))).await;
    assert_eq!(status, StatusCode::OK);
    wait_succeeded(&srv, &a, &held[0]).await;
    wait_succeeded(&srv, &b, &held[1]).await;
    srv.stop().await;
}

/// Runs `ferry token reopen` on the store of `cfg` (its server stopped); its exit status
/// and output.
fn reopen_with_the_cli(cfg: &ferry::config::Config) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["token", "reopen", "--data-dir"]).arg(&cfg.data_dir).env_clear();
    if let Some(url) = &cfg.database_url {
        cmd.args(["--database", url]);
    }
    if let Some(schema) = &cfg.database_schema {
        cmd.env("FERRY_DATABASE_SCHEMA", schema);
    }
    let out = cmd.output().expect("the ferry binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn revoking_every_token_keeps_the_server_closed_until_reopened(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = srv.post("/v1/tokens", json!({"user": "ann", "role": "admin"})).await;
    assert_eq!(status, StatusCode::CREATED, "open mode: the local operator makes the first token: {body}");
    let (admin_id, admin) = (body["id"].as_str().expect("id").to_string(), body["token"].as_str().expect("secret"));
    let admin = admin.to_string();
    // The CLI refuses to reopen while a token is live.
    let mut refused = None;
    let srv = srv.restart_with(|cfg| refused = Some(reopen_with_the_cli(cfg))).await;
    let (ok, text) = refused.expect("ran");
    assert!(!ok && text.contains("unrevoked"), "reopened with a live token: {text}");
    // The last token revoked, the server stays closed.
    let (status, _) = srv.call_as(&admin, Method::DELETE, &format!("/v1/tokens/{admin_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = srv.get("/v1/jobs").await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    let got = srv.post("/v1/tokens", json!({"user": "eve", "role": "admin"})).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    // ... across a restart too.
    let srv = srv.restart_with(|_| {}).await;
    let got = srv.get("/v1/jobs").await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthenticated", None);
    // Reopened on the store, open mode is back.
    let mut reopened = None;
    let srv = srv.restart_with(|cfg| reopened = Some(reopen_with_the_cli(cfg))).await;
    let (ok, text) = reopened.expect("ran");
    assert!(ok && text.contains("reopened"), "{text}");
    let (status, body) = srv.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    srv.stop().await;
}
