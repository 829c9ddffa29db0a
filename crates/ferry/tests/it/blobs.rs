//! Promise: blobs keep large payloads out of job rows and event logs. `blob_put`,
//! `blob_get` and `blob_delete` work against the store's blobs in the job's workspace,
//! each bounded by its own timeout (10 s, 5 s and 3 s by default): a store slower than
//! that (here, one whose lock the test holds: a blob directory's `flock` on SQLite, the
//! `blobs` table on PostgreSQL) ends the attempt with `timeout`, and the same step
//! succeeds once the store is fast again. An input or output over `claim_check_bytes`
//! is kept as a blob and referenced (`{"$blob": {"hash", "size"}}`): a 10 MiB output is
//! fetched back byte for byte from `GET /v1/blobs/{hash}` while its job stays small, a
//! large input reaches its kind whole, and the limits hold at their edges.

use crate::harness::{Backend, TestServer, assert_error, both};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Connection;

both!(
    put_get_delete_round_trip_with_the_kinds_defaults,
    a_10_mib_output_is_kept_as_a_blob_and_the_job_stays_small,
    claim_checks_and_limits_hold_at_their_edges,
    each_step_times_out_on_a_slow_store_and_succeeds_once_it_is_fast,
    bad_input_is_refused_and_workspaces_are_apart,
    a_whole_claim_checked_output_passes_on_through_a_workflow,
);

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` pseudo-random letters and digits (so no test passes by accident on a run of one
/// byte, and none needs escaping in JSON: its size there is `n` plus the quotes).
fn text(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

/// Runs one job to an end and returns its view.
async fn run(server: &TestServer, spec: Value) -> Value {
    let id = server.submit(spec).await;
    server.wait_state(&id, &["succeeded", "dead"]).await
}

/// The raw answer of `GET path`: status, content type, `ETag` and bytes.
async fn raw(server: &TestServer, path: &str) -> (StatusCode, String, String, Vec<u8>) {
    let resp = server.client().get(format!("{}{path}", server.url())).send().await.expect("the server answers");
    let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, content_type, etag) = (resp.status(), header("content-type"), header("etag"));
    (status, content_type, etag, resp.bytes().await.expect("a body").to_vec())
}

async fn put_get_delete_round_trip_with_the_kinds_defaults(backend: Backend) {
    let server = TestServer::start(backend).await;
    let put = run(&server, json!({"kind": "blob_put", "input": {"text": "hello, blobs"}})).await;
    assert_eq!(put["state"], "succeeded", "{put:#}");
    let hash = sha(b"hello, blobs");
    assert_eq!(put["output"], json!({"hash": hash, "size": 12}), "the address is the SHA-256 of the bytes");
    let again = run(&server, json!({"kind": "blob_put", "input": {"text": "hello, blobs"}})).await;
    assert_eq!(again["output"], put["output"], "the same content, the same blob");

    let got = run(&server, json!({"kind": "blob_get", "input": {"hash": hash}})).await;
    assert_eq!(got["output"], json!({"text": "hello, blobs"}), "read back in the shape it was put");
    let (status, content_type, etag, bytes) = raw(&server, &format!("/v1/blobs/{hash}")).await;
    assert_eq!(
        (status, content_type.as_str(), bytes.as_slice()),
        (StatusCode::OK, "text/plain; charset=utf-8", &b"hello, blobs"[..])
    );
    assert_eq!(etag, format!("\"{hash}\""));

    // JSON and bytes come back as they went in.
    let data = json!({"a": [1, 2, {"b": null}], "c": "é"});
    let put = run(&server, json!({"kind": "blob_put", "input": {"data": data}})).await;
    let json_hash = put["output"]["hash"].as_str().expect("a hash").to_string();
    let got = run(&server, json!({"kind": "blob_get", "input": {"hash": json_hash}})).await;
    assert_eq!(got["output"], json!({"data": data}));
    let (_, content_type, _, bytes) = raw(&server, &format!("/v1/blobs/{json_hash}")).await;
    assert_eq!(
        (content_type.as_str(), serde_json::from_slice::<Value>(&bytes).expect("JSON")),
        ("application/json", data)
    );
    let put = run(&server, json!({"kind": "blob_put", "input": {"base64": "AAEC/w=="}})).await;
    let bin = put["output"]["hash"].as_str().expect("a hash").to_string();
    assert_eq!(bin, sha(&[0, 1, 2, 255]));
    let (_, content_type, _, bytes) = raw(&server, &format!("/v1/blobs/{bin}")).await;
    assert_eq!((content_type.as_str(), bytes), ("application/octet-stream", vec![0, 1, 2, 255]));

    let deleted = run(&server, json!({"kind": "blob_delete", "input": {"hash": hash}})).await;
    assert_eq!(deleted["output"], json!({"deleted": true}));
    let deleted = run(&server, json!({"kind": "blob_delete", "input": {"hash": hash}})).await;
    assert_eq!(
        (deleted["state"].as_str(), &deleted["output"]),
        (Some("succeeded"), &json!({"deleted": false})),
        "a missing blob is no error"
    );
    let (status, body) = server.get(&format!("/v1/blobs/{hash}")).await;
    assert_error(&(status, body), StatusCode::NOT_FOUND, "not_found", None);
    let missing = run(&server, json!({"kind": "blob_get", "input": {"hash": hash}, "max_attempts": 5})).await;
    assert_eq!(
        (missing["state"].as_str(), missing["error"]["type"].as_str()),
        (Some("dead"), Some("not_found")),
        "{missing:#}"
    );
    assert_eq!(missing["attempts_used"], 1, "a missing blob is not retried");

    // Each kind's own default timeout.
    for (kind, input, ms) in [
        ("blob_put", json!({"text": "x"}), 10_000),
        ("blob_get", json!({"hash": hash}), 5_000),
        ("blob_delete", json!({"hash": hash}), 3_000),
    ] {
        let id = server.submit(json!({"kind": kind, "input": input})).await;
        assert_eq!(server.job(&id).await["timeout_ms"], ms, "{kind}");
        server.wait_state(&id, &["succeeded", "dead"]).await;
    }
    server.stop().await;
}

async fn a_10_mib_output_is_kept_as_a_blob_and_the_job_stays_small(backend: Backend) {
    let server = TestServer::start(backend).await;
    let content = text(10 * 1024 * 1024, 7);
    // The input (10 MiB, over the 1 MiB input limit) is itself claim-checked.
    let put = run(&server, json!({"kind": "blob_put", "input": {"text": content}})).await;
    assert_eq!(put["state"], "succeeded", "{:#}", put["error"]);
    let hash = sha(content.as_bytes());
    assert_eq!(put["output"], json!({"hash": hash, "size": 10 * 1024 * 1024}), "the kind saw the whole input");
    assert!(put["input"]["$blob"]["hash"].is_string(), "the job holds a reference: {}", put["input"]);

    let id = server.submit(json!({"kind": "blob_get", "input": {"hash": hash}})).await;
    let got = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(got["state"], "succeeded", "{:#}", got["error"]);
    let reference = &got["output"]["$blob"];
    let out_hash = reference["hash"].as_str().unwrap_or_else(|| panic!("the output is a reference: {}", got["output"]));
    let view = serde_json::to_string(&got).expect("JSON");
    assert!(view.len() < 4096, "GET /v1/jobs/{{id}} stays small: {} bytes", view.len());
    let (status, events) = server.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let events = serde_json::to_string(&events).expect("JSON");
    assert!(events.len() < 8192, "so do its events: {} bytes", events.len());

    // Fetched back byte for byte: the output's blob, and the blob the first job put.
    let (status, content_type, etag, bytes) = raw(&server, &format!("/v1/blobs/{out_hash}")).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/json"));
    assert_eq!((sha(&bytes), bytes.len() as u64), (out_hash.to_string(), reference["size"].as_u64().expect("a size")));
    assert_eq!(etag, format!("\"{out_hash}\""));
    let output: Value = serde_json::from_slice(&bytes).expect("the output is JSON");
    assert!(output["text"].as_str() == Some(content.as_str()), "the output's text is the content");
    let (status, _, _, bytes) = raw(&server, &format!("/v1/blobs/{hash}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == content.as_bytes(), "the blob is the bytes put, {} of them", bytes.len());
    server.stop().await;
}

async fn claim_checks_and_limits_hold_at_their_edges(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.blobs.claim_check_bytes = 1000;
        cfg.blobs.max_bytes = 3000;
    })
    .await;
    // `{"text":"…"}` is 11 bytes around the text.
    let at = text(1000 - 11, 1);
    let id = server.submit(json!({"kind": "blob_put", "input": {"text": at}})).await;
    let job = server.wait_state(&id, &["succeeded"]).await;
    assert_eq!(job["input"], json!({"text": at}), "an input of exactly claim_check_bytes stays inline");
    let over = text(1000 - 10, 2);
    let id = server.submit(json!({"kind": "blob_put", "input": {"text": over}})).await;
    let job = server.wait_state(&id, &["succeeded"]).await;
    let input_json = serde_json::to_vec(&json!({"text": over})).expect("JSON");
    assert_eq!(
        job["input"],
        json!({"$blob": {"hash": sha(&input_json), "size": 1001}}),
        "one byte more is a reference"
    );
    assert_eq!(job["output"]["hash"], sha(over.as_bytes()), "and the kind saw the whole input");
    let (_, _, _, bytes) = raw(&server, &format!("/v1/blobs/{}", sha(&input_json))).await;
    assert_eq!(bytes, input_json, "the input's blob is the input");

    // An input of exactly max_bytes is kept; one byte more is refused, and nothing stored.
    let at_max = json!({"text": text(3000 - 11, 3)});
    let id = server.submit(json!({"kind": "blob_put", "input": at_max})).await;
    assert_eq!(server.wait_state(&id, &["succeeded", "dead"]).await["state"], "succeeded");
    let over_max = json!({"kind": "noop", "input": {"text": text(3000 - 10, 4)}});
    let refused = server.post("/v1/jobs", over_max.clone()).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some("input"));
    let stored = sha(&serde_json::to_vec(&over_max["input"]).expect("JSON"));
    assert_eq!(server.get(&format!("/v1/blobs/{stored}")).await.0, StatusCode::NOT_FOUND, "nothing was stored");
    let refused = server.post("/v1/jobs/batch", json!({"jobs": [{"kind": "noop"}, over_max]})).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some("jobs[1].input"));
    // A blob_put's own content over max_bytes names its field.
    let refused = server.post("/v1/jobs", json!({"kind": "blob_put", "input": {"text": text(3001, 5)}})).await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Some("input.text"));

    // An output of exactly max_bytes is kept as a blob; one byte more fails the attempt.
    // `{"text":"…"}` again: a blob of 2989 bytes read back is an output of 3000.
    let at_out = text(3000 - 11, 6);
    let put = run(&server, json!({"kind": "blob_put", "input": {"text": at_out}})).await;
    let got = run(&server, json!({"kind": "blob_get", "input": {"hash": put["output"]["hash"]}})).await;
    assert_eq!(got["output"]["$blob"]["size"], 3000, "{got:#}");
    // Its input would be over max_bytes: this blob is put straight into the store.
    let over_out = text(3000 - 10, 8);
    let roomy = ferry_store::Blobs::new(server.store.blobs(), ferry_store::BlobsConfig::default());
    let r = roomy.put("default", ferry_store::Media::Text, over_out.into_bytes()).await.expect("stored");
    let got = run(&server, json!({"kind": "blob_get", "input": {"hash": r.hash}})).await;
    assert_eq!(
        (got["state"].as_str(), got["error"]["type"].as_str()),
        (Some("dead"), Some("resource_limit")),
        "{got:#}"
    );
    server.stop().await;
}

/// A store made slow by a lock the test holds: a blob directory's lock on SQLite, the
/// `blobs` table on PostgreSQL.
enum Slow {
    Dir(std::fs::File),
    Table(sqlx::PgConnection),
}

impl Slow {
    async fn hold(server: &TestServer, hash: &str) -> Slow {
        let cfg = server.cfg();
        match (&cfg.database_url, &cfg.database_schema) {
            (Some(url), Some(schema)) => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("a connection");
                sqlx::query("BEGIN").execute(&mut conn).await.expect("a transaction");
                let lock = format!("LOCK TABLE {schema}.blobs IN ACCESS EXCLUSIVE MODE");
                sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut conn).await.expect("the table's lock");
                Slow::Table(conn)
            }
            _ => {
                let dir = ferry_store::sqlite::blob_dir(&cfg.data_dir, "default", hash);
                std::fs::create_dir_all(&dir).expect("the blob's directory");
                let f = std::fs::File::open(&dir).expect("the directory opens");
                f.lock().expect("the directory's lock");
                Slow::Dir(f)
            }
        }
    }

    async fn release(self) {
        match self {
            Slow::Dir(f) => f.unlock().expect("unlocked"),
            Slow::Table(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.expect("released");
                let _ = conn.close().await;
            }
        }
    }
}

async fn each_step_times_out_on_a_slow_store_and_succeeds_once_it_is_fast(backend: Backend) {
    let server = TestServer::start(backend).await;
    let content = "slow store";
    let hash = sha(content.as_bytes());
    let slow = Slow::hold(&server, &hash).await;
    let mut ids = Vec::new();
    for (kind, input) in [
        ("blob_put", json!({"text": content})),
        ("blob_get", json!({"hash": hash})),
        ("blob_delete", json!({"hash": hash})),
    ] {
        let id = server.submit(json!({"kind": kind, "input": input, "timeout_ms": 400, "max_attempts": 1})).await;
        let job = server.wait_state(&id, &["succeeded", "dead"]).await;
        assert_eq!(
            (job["state"].as_str(), job["error"]["type"].as_str()),
            (Some("dead"), Some("timeout")),
            "{kind}: {job:#}"
        );
        ids.push(id);
    }
    slow.release().await;
    // The same steps, replayed on a store that answers: the put stores, the get reads it,
    // the delete deletes it (the put that timed out stored nothing).
    let expected = [json!({"hash": hash, "size": content.len()}), json!({"text": content}), json!({"deleted": true})];
    for (id, want) in ids.iter().zip(expected) {
        let (status, body) = server.post(&format!("/v1/jobs/{id}/replay"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let job = server.wait_job(id, "its replay to end", |j| j["state"] == "succeeded" || j["state"] == "dead").await;
        assert_eq!((job["state"].as_str(), &job["output"]), (Some("succeeded"), &want), "{job:#}");
    }
    server.stop().await;
}

async fn bad_input_is_refused_and_workspaces_are_apart(backend: Backend) {
    let server = TestServer::start(backend).await;
    let h = "a".repeat(64);
    for (spec, field) in [
        (json!({"kind": "blob_put", "input": {}}), "input"),
        (json!({"kind": "blob_put", "input": {"text": "a", "data": 1}}), "input"),
        (json!({"kind": "blob_put", "input": {"text": 1}}), "input.text"),
        (json!({"kind": "blob_put", "input": {"base64": "not base64!"}}), "input.base64"),
        (json!({"kind": "blob_put", "input": {"text": "a", "name": "x"}}), "input.name"),
        (json!({"kind": "blob_get", "input": {"hash": "ABC"}}), "input.hash"),
        (json!({"kind": "blob_delete", "input": {}}), "input.hash"),
        (json!({"kind": "noop", "input": {"$blob": {"hash": "../../x", "size": 1}}}), "input"),
        (json!({"kind": "noop", "input": {"$blob": {"hash": h, "size": 1}, "more": 1}}), "input"),
    ] {
        let refused = server.post("/v1/jobs", spec.clone()).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_field", Some(field));
    }
    let refused = server.get("/v1/blobs/not-a-hash").await;
    assert_eq!(refused.0, StatusCode::BAD_REQUEST, "{}", refused.1);
    assert_eq!(server.count_jobs().await, 0, "nothing was stored");

    // Workspace `a` puts a blob; `b` cannot read it (404, as if it did not exist).
    let (_, a) = server.token("a", "ann", Role::Submitter).await;
    let (_, b) = server.token("b", "bob", Role::Admin).await;
    let (status, body) =
        server.call_as(&a, Method::POST, "/v1/jobs", Some(json!({"kind": "blob_put", "input": {"text": "a's"}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let hash = sha(b"a's");
    crate::harness::poll("a's put", async || {
        let (_, job) = server.call_as(&a, Method::GET, &format!("/v1/jobs/{id}"), None).await;
        (job["state"] == "succeeded").then_some(())
    })
    .await;
    let (status, body) = server.call_as(&a, Method::GET, &format!("/v1/blobs/{hash}"), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!("a's")));
    let got = server.call_as(&b, Method::GET, &format!("/v1/blobs/{hash}"), None).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", None);
    server.stop().await;
}

async fn a_whole_claim_checked_output_passes_on_through_a_workflow(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| cfg.blobs.claim_check_bytes = 1000).await;
    let data = json!({"items": [text(3000, 9)]});
    let put = run(&server, json!({"kind": "blob_put", "input": {"data": data}})).await;
    let hash = put["output"]["hash"].as_str().expect("a hash").to_string();
    // `b` puts what `a` read: the reference `a`'s output became is read back for `b`'s
    // kind, which would refuse a `$blob` field as input.
    let def = json!({"name": "pass", "nodes": [
        {"id": "a", "kind": "blob_get", "input": {"hash": "{{ input.hash }}"}},
        {"id": "b", "kind": "blob_put", "depends_on": ["a"], "input": "{{ nodes.a.output }}"}
    ]});
    let (status, body) = server.post("/v1/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/v1/runs", json!({"workflow": "pass", "input": {"hash": hash}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let done = crate::harness::poll("the run to end", async || {
        let (_, r) = server.get(&format!("/v1/runs/{id}")).await;
        (r["state"] != "running").then_some(r)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let node =
        |n: &str| done["nodes"].as_array().expect("nodes").iter().find(|x| x["id"] == n).expect("a node").clone();
    assert!(node("a")["output"]["$blob"]["hash"].is_string(), "a's output is a reference: {}", node("a")["output"]);
    assert_eq!(node("b")["output"], json!({"hash": hash, "size": serde_json::to_vec(&data).expect("JSON").len()}));
    server.stop().await;
}
