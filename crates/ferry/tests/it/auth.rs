//! API tokens: zero setup until one exists, then every /v1 request needs one; a token
//! sees only its workspace (another workspace's objects answer 404) and acts within its
//! role; a revoked token is refused on the next request, on every node.

use crate::harness::{Backend, DEADLINE, TestServer, both};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Instant;

both!(
    tokens_are_required_once_one_exists,
    every_endpoint_keeps_to_the_token_workspace,
    roles_limit_what_a_token_may_do,
    a_revoked_token_is_refused_on_the_next_request,
);

async fn tokens_are_required_once_one_exists(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, _) = srv.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "zero setup: loopback without tokens is open");
    let (status, body) = srv.post("/v1/tokens", json!({"user": "ann", "role": "admin"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["token"].as_str().expect("the secret, once").to_string();
    assert!(secret.starts_with("ferry_") && secret.len() > 60, "{secret}");
    assert_eq!(body["workspace"], "default");

    let (status, body) = srv.get("/v1/jobs").await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("unauthenticated")), "{body}");
    let (status, _) = srv.call_as("ferry_made_up", Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = srv.call_as(&secret, Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    // Health, readiness, metrics and the API document stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let (status, _) = srv.get_text(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // Listing shows no secret, only the hash is stored.
    let (_, list) = srv.call_as(&secret, Method::GET, "/v1/tokens", None).await;
    assert_eq!(list["tokens"].as_array().map(Vec::len), Some(1), "{list}");
    assert!(list["tokens"][0].get("token").is_none(), "{list}");
    assert!(!list.to_string().contains(&secret[6..]));
    srv.stop().await;
}

async fn every_endpoint_keeps_to_the_token_workspace(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, a) = srv.token("team-a", "alice", Role::Admin).await;
    let (b_id, b) = srv.token("team-b", "bob", Role::Admin).await;
    // A's objects: a finished job, a workflow and a run.
    let (status, job) = srv.call_as(&a, Method::POST, "/v1/jobs", Some(json!({"kind": "noop"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let job = job["id"].as_str().expect("id").to_string();
    let (status, _) = srv
        .call_as(&a, Method::POST, "/v1/workflows", Some(json!({"name": "wf", "nodes": [{"id": "n", "kind": "noop"}]})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, run) = srv.call_as(&a, Method::POST, "/v1/runs", Some(json!({"workflow": "wf"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = run["id"].as_str().expect("id").to_string();
    let started = Instant::now();
    loop {
        let (_, j) = srv.call_as(&a, Method::GET, &format!("/v1/jobs/{job}"), None).await;
        let (_, r) = srv.call_as(&a, Method::GET, &format!("/v1/runs/{run}"), None).await;
        if j["state"] == "succeeded" && r["state"] == "succeeded" {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "A's work did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // B sees none of it, by id or in listings.
    let by_id = [
        (Method::GET, format!("/v1/jobs/{job}")),
        (Method::POST, format!("/v1/jobs/{job}/cancel")),
        (Method::POST, format!("/v1/jobs/{job}/replay")),
        (Method::GET, format!("/v1/jobs/{job}/events")),
        (Method::DELETE, format!("/v1/jobs/{job}")),
        (Method::GET, format!("/v1/runs/{run}")),
        (Method::POST, format!("/v1/runs/{run}/cancel")),
        (Method::GET, format!("/v1/runs/{run}/events")),
        (Method::GET, "/v1/workflows/wf".to_string()),
    ];
    for (method, path) in by_id {
        let (status, body) = srv.call_as(&b, method.clone(), &path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path} as B: {body}");
    }
    let (status, body) = srv.call_as(&b, Method::POST, "/v1/runs", Some(json!({"workflow": "wf"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "B cannot start A's workflow: {body}");
    for (path, key) in [("/v1/jobs", "items"), ("/v1/runs", "items"), ("/v1/workflows", "workflows")] {
        let (_, body) = srv.call_as(&b, Method::GET, path, None).await;
        assert_eq!(body[key], json!([]), "{path} as B: {body}");
    }
    let (_, tokens) = srv.call_as(&b, Method::GET, "/v1/tokens", None).await;
    let ids: Vec<&str> = tokens["tokens"].as_array().expect("tokens").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, vec![b_id.as_str()], "B lists only its own tokens");
    let (_, a_tokens) = srv.call_as(&a, Method::GET, "/v1/tokens", None).await;
    let a_id = a_tokens["tokens"][0]["id"].as_str().expect("id").to_string();
    let (status, _) = srv.call_as(&b, Method::DELETE, &format!("/v1/tokens/{a_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "B cannot revoke A's token");
    // Label rates belong to their workspace: B neither sees nor removes A's.
    let (status, _) = srv.call_as(&a, Method::PUT, "/v1/limits/rates/api", Some(json!({"rate": 3}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, rates) = srv.call_as(&b, Method::GET, "/v1/limits/rates", None).await;
    assert_eq!(rates["rates"], json!([]), "B lists none of A's rates");
    let (status, _) = srv.call_as(&b, Method::DELETE, "/v1/limits/rates/api", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "B cannot remove A's rate");
    // A still has everything.
    let (_, rates) = srv.call_as(&a, Method::GET, "/v1/limits/rates", None).await;
    assert_eq!(rates["rates"], json!([{"label": "api", "rate": 3.0}]));
    let (status, _) = srv.call_as(&a, Method::GET, &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(status, StatusCode::OK);
    srv.stop().await;
}

async fn roles_limit_what_a_token_may_do(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, viewer) = srv.token("w", "vic", Role::Viewer).await;
    let (_, submitter) = srv.token("w", "sue", Role::Submitter).await;
    let forbidden = [
        (&viewer, Method::POST, "/v1/jobs", json!({"kind": "noop"})),
        (&viewer, Method::POST, "/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}]})),
        (&viewer, Method::POST, "/v1/workflows", json!({"name": "x", "nodes": [{"id": "n", "kind": "noop"}]})),
        (&viewer, Method::POST, "/v1/runs", json!({"workflow": "x"})),
        (&viewer, Method::GET, "/v1/tokens", json!(null)),
        (&submitter, Method::GET, "/v1/tokens", json!(null)),
        (&submitter, Method::POST, "/v1/tokens", json!({"user": "x", "role": "admin"})),
        (&submitter, Method::GET, "/v1/limits/rates", json!(null)),
        (&submitter, Method::PUT, "/v1/limits/rates/api", json!({"rate": 1})),
        (&submitter, Method::DELETE, "/v1/limits/rates/api", json!(null)),
        (&submitter, Method::PUT, "/v1/queues/default", json!({"rate": 1})),
    ];
    for (token, method, path, body) in forbidden {
        let (status, answer) = srv.call_as(token, method.clone(), path, Some(body)).await;
        assert_eq!((status, &answer["error"]["code"]), (StatusCode::FORBIDDEN, &json!("forbidden")), "{method} {path}");
    }
    let (status, job) = srv.call_as(&submitter, Method::POST, "/v1/jobs", Some(json!({"kind": "noop"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().expect("id");
    let (status, _) = srv.call_as(&viewer, Method::GET, &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "a viewer reads its workspace's work");
    let (status, _) = srv.call_as(&viewer, Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    srv.stop().await;
}

async fn a_revoked_token_is_refused_on_the_next_request(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (_, admin) = srv.token("w", "root", Role::Admin).await;
    let (id, user) = srv.token("w", "temp", Role::Submitter).await;
    let (status, _) = srv.call_as(&user, Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK, "cached as valid now");
    // On PostgreSQL a second node holds the token in its cache too.
    let other = match backend {
        Backend::Postgres => Some(srv.peer(|cfg| cfg.workers = 0).await),
        Backend::Sqlite => None,
    };
    if let Some(other) = &other {
        let (status, _) = other.call_as(&user, Method::GET, "/v1/jobs", None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = srv.call_as(&admin, Method::DELETE, &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = srv.call_as(&user, Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "refused at once where it was revoked: {body}");
    if let Some(other) = other {
        // The other node hears of it by notification, within milliseconds.
        let started = Instant::now();
        loop {
            let (status, _) = other.call_as(&user, Method::GET, "/v1/jobs", None).await;
            if status == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "the other node still accepts it");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        other.stop().await;
    }
    let (status, _) = srv.call_as(&admin, Method::DELETE, &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already revoked");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_needs_tokens_or_insecure() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = ferry::config::Config {
        listen: "0.0.0.0:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        exec_helper: Some(env!("CARGO_BIN_EXE_ferry").into()),
        ..ferry::config::Config::default()
    };
    let err = ferry::app::start(&cfg).await.err().expect("refused without tokens");
    assert!(err.to_string().contains("refusing to listen"), "{err:#}");
    let server =
        ferry::app::start(&ferry::config::Config { insecure: true, ..cfg }).await.expect("starts with --insecure");
    server.stop().await.expect("stops");
}
