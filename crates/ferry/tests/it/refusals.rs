//! Promise: every refusal, whatever layer makes it (path, query, method, head size, media
//! type, body size, JSON syntax), answers the one error shape
//! `{"error": {"code", "message", "field"?}}` with a stable code, and changes nothing;
//! past hyper's own head limits, the answer is a bare status line (documented).

use crate::harness::{Backend, TestServer, assert_error, both};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

both!(input_of_a_run_must_be_an_object);

/// Sends `request` (raw bytes, with `Connection: close` in it) and reads the whole answer:
/// (status, head, body as JSON or as a string).
async fn raw(server: &TestServer, request: &[u8]) -> (StatusCode, String, Value) {
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(addr).await.expect("connects");
    conn.write_all(request).await.expect("sent");
    let mut got = Vec::new();
    // The server may close while this client still sends (a head too large): what was
    // read until then is the answer.
    let read = async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(crate::harness::DEADLINE, read).await.expect("the server answers and closes");
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer head in {text:?}"));
    let status = StatusCode::from_u16(head[9..12].parse().expect("a status")).expect("a status");
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, head.to_string(), body)
}

/// (what, the raw request, status, code, field).
type Case<'a> = (&'a str, Vec<u8>, StatusCode, &'a str, Option<&'a str>);

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n{extra_headers}\r\n").into_bytes()
}

fn post(path: &str, content_type: Option<&str>, body: &str) -> Vec<u8> {
    let ct = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn header_lines(n: usize, value_len: usize) -> String {
    (0..n).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(value_len))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_error_shape() {
    let server = TestServer::start(Backend::Sqlite).await;
    let id = uuid::Uuid::now_v7();
    let long = format!("/v1/jobs?kind={}", "k".repeat(9 * 1024));
    let noop = r#"{"kind": "noop"}"#;
    let cases: Vec<Case> = vec![
        (
            "query: not a number",
            get("/v1/runs/x/events?after=abc", ""),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some("after"),
        ),
        (
            "query: out of range",
            get("/v1/runs/x/events?after=99999999999999999999", ""),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some("after"),
        ),
        (
            "query: unknown",
            get("/v1/jobs/x/events?before=1", ""),
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some("before"),
        ),
        (
            "query: negative job cursor",
            get(&format!("/v1/jobs/{id}/events?after=-5"), ""),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("after"),
        ),
        (
            "query: negative run cursor",
            get(&format!("/v1/runs/{id}/events?after=-1"), ""),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("after"),
        ),
        ("path: not UTF-8", get("/v1/jobs/%FF", ""), StatusCode::BAD_REQUEST, "invalid_path", Some("id")),
        ("path: not UTF-8, deeper", get("/v1/runs/%C3%28", ""), StatusCode::BAD_REQUEST, "invalid_path", Some("id")),
        ("method", get_with_method("DELETE", "/v1/jobs"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
        (
            "method: system",
            get_with_method("POST", "/healthz"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
        ("uri too long", get(&long, ""), StatusCode::URI_TOO_LONG, "uri_too_long", None),
        (
            "too many headers",
            get("/healthz", &header_lines(70, 1)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            None,
        ),
        (
            "headers too large",
            get("/healthz", &header_lines(2, 9 * 1024)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            None,
        ),
        (
            "media type",
            post("/v1/jobs", Some("text/plain"), noop),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        (
            "media type: multipart",
            post("/v1/jobs", Some("multipart/form-data; boundary=x"), noop),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        (
            "charset",
            post("/v1/jobs", Some("application/json; charset=latin1"), noop),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        (
            "duplicate key",
            post("/v1/jobs", Some("application/json"), r#"{"kind":"noop","kind":"sleep"}"#),
            StatusCode::BAD_REQUEST,
            "duplicate_key",
            Some("kind"),
        ),
        (
            "duplicate key, nested",
            post("/v1/jobs", None, r#"{"kind":"noop","input":{"a":1,"b":{},"a":2}}"#),
            StatusCode::BAD_REQUEST,
            "duplicate_key",
            Some("input.a"),
        ),
        (
            "duplicate key, in a batch",
            post("/v1/jobs/batch", None, r#"{"jobs":[{"kind":"noop"},{"kind":"noop","input":{"a":1,"a":1}}]}"#),
            StatusCode::BAD_REQUEST,
            "duplicate_key",
            Some("jobs[1].input.a"),
        ),
        (
            "declared body over the limit, none sent",
            b"POST /v1/jobs HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Length: 50000000\r\n\r\n".to_vec(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ];
    for (what, request, status, code, field) in cases {
        let (got_status, head, body) = raw(&server, &request).await;
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{what}: not JSON: {head}\n{body}");
        assert_error(&(got_status, body.clone()), status, code, field);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(head.contains("\r\nallow: "), "{what}: no Allow header: {head}");
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let message = body["error"]["message"].as_str().unwrap();
            let limit = server.cfg().limits.max_body_bytes.to_string();
            assert!(message.contains(&limit), "{what}: the message names the limit: {message}");
        }
    }
    // Nothing was stored by any of them.
    assert_eq!(server.count_jobs().await, 0);
    server.stop().await;
}

fn get_with_method(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_accepted_under_every_name_curl_and_clients_use() {
    let server = TestServer::start(Backend::Sqlite).await;
    let noop = r#"{"kind": "noop"}"#;
    for ct in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("Application/JSON;charset=\"UTF-8\""),
        Some("application/vnd.ferry.job+json"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, _, body) = raw(&server, &post("/v1/jobs", ct, noop)).await;
        assert_eq!(status, StatusCode::CREATED, "{ct:?}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_hypers_head_limits_the_answer_is_a_bare_status() {
    // Documented in `ferry_server::listener`: a head over 64 KiB never reaches Ferry.
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, head, body) = raw(&server, &get("/healthz", &header_lines(8, 9 * 1024))).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{head}");
    assert_eq!(body, json!(""), "{head}");
    let (status, head, body) = raw(&server, &get("/healthz", &header_lines(101, 1))).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{head}");
    assert_eq!(body, json!(""), "{head}");
    // The server still serves.
    let (status, _, _) = raw(&server, &get("/healthz", "")).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_workspace_limits_are_capped_at_their_edge() {
    let server = TestServer::start(Backend::Sqlite).await;
    let cap = ferry_server::limits::MAX_LIMIT_USERS;
    let limits = |n: usize| {
        let users: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("u{i}"), json!({"runs": 1, "jobs": null}))).collect();
        json!({"per_workspace": {"runs": 10, "jobs": null}, "per_user": {"runs": 5, "jobs": null}, "users": users})
    };
    let put = async |body: Value| {
        let resp = server.client().put(format!("{}/v1/limits", server.url())).json(&body).send().await.unwrap();
        let status = resp.status();
        (status, resp.json::<Value>().await.unwrap())
    };
    let (status, body) = put(limits(cap)).await;
    assert_eq!(status, StatusCode::OK, "{}", body["error"]);
    let got = put(limits(cap + 1)).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("users"));
    // The refused one changed nothing.
    let (_, now) = server.get("/v1/limits").await;
    assert_eq!(now["users"].as_object().map(|u| u.len()), Some(cap));
    server.stop().await;
}

async fn input_of_a_run_must_be_an_object(backend: Backend) {
    let server = TestServer::start(backend).await;
    let wf = json!({"name": "one", "nodes": [{"id": "a", "kind": "noop"}]});
    let (status, body) = server.post("/v1/workflows", wf).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for input in [json!([1]), json!("str"), json!(5), json!(true)] {
        let got = server.post("/v1/runs", json!({"workflow": "one", "input": input})).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input"));
    }
    let (_, runs) = server.get("/v1/runs").await;
    assert_eq!(runs["items"], json!([]), "nothing started: {runs}");
    for body in [
        json!({"workflow": "one"}),
        json!({"workflow": "one", "input": null}),
        json!({"workflow": "one", "input": {"x": 1}}),
    ] {
        let (status, answer) = server.post("/v1/runs", body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}: {answer}");
    }
    server.stop().await;
}
