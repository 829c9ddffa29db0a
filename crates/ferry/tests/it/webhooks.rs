//! Promise: a `webhook` delivery is signed as Standard Webhooks says (a receiver holding
//! only the secret verifies it, and the payload arrives as submitted), keeps its
//! `webhook-id` through retries and replays, stops at a 410, runs on its own queue however
//! busy `default` is, and never shows its secret.
//!
//! The receiver is a real HTTP server on loopback; it verifies each signature the way
//! `docs/webhooks.md` tells a receiver to, with the `hmac` crate, apart from the signer.

use crate::harness::{Backend, DEADLINE, TestServer, assert_error, attempts, both, poll};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as Status, Uri};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry::config::Config;
use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

both!(
    every_delivery_verifies_and_carries_its_payload_intact,
    a_workflow_node_delivers_on_the_webhook_queue,
    a_retry_and_a_replay_keep_the_webhook_id,
    ordered_deliveries_arrive_in_order_a_retry_holding_the_line,
    gone_is_dead_after_one_attempt_and_disables_the_endpoint,
    the_webhook_queue_serves_while_default_is_full,
    an_unknown_secret_is_refused_naming_the_field,
    the_secret_is_never_shown,
);

/// The Standard Webhooks test vector's secret: the server's `partner`.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another server secret (`billing`), 32 bytes of key.
const OTHER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The test configuration with the two secrets.
pub(crate) fn with_secrets(cfg: &mut Config) {
    cfg.webhooks.secrets.insert("partner".into(), SECRET.parse().expect("a valid secret"));
    cfg.webhooks.secrets.insert("billing".into(), OTHER_SECRET.parse().expect("a valid secret"));
}

/// What the receiver got: one request (the escalation tests' receiver too).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Delivery {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} in {self:?}"))
    }

    fn id(&self) -> &str {
        self.header("webhook-id")
    }

    fn timestamp(&self) -> i64 {
        self.header("webhook-timestamp").parse().expect("whole seconds")
    }

    pub(crate) fn payload(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Verifies a delivery as a receiver does (docs/webhooks.md): the timestamp within five
/// minutes of now; then, with the key (base64 after `whsec_`), the HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{raw body}` compared in constant time with each `v1,`
/// signature of the header.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).ok_or(format!("no {name}"));
    let (id, timestamp, signatures) = (get("webhook-id")?, get("webhook-timestamp")?, get("webhook-signature")?);
    let sent: i64 = timestamp.parse().map_err(|_| format!("timestamp `{timestamp}` is not whole seconds"))?;
    if (chrono::Utc::now().timestamp() - sent).abs() > 5 * 60 {
        return Err(format!("timestamp {sent} is more than five minutes off"));
    }
    let key = BASE64.decode(secret.strip_prefix("whsec_").ok_or("not a whsec_ secret")?).map_err(|e| e.to_string())?;
    for signature in signatures.split(' ') {
        let Some(Ok(given)) = signature.strip_prefix("v1,").map(|s| BASE64.decode(s)) else { continue };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(format!("no signature of `{signatures}` matches"))
}

/// A webhook endpoint on loopback. By path: `/ok` answers 200; `/gone` 410; a path under
/// `/fail-once/` 500 the first time and 200 afterwards; `/fail` always 500. Each request
/// reaches the test through [`Receiver::next`].
pub(crate) struct Receiver {
    base: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let (tx, deliveries) = mpsc::unbounded_channel();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let path = uri.path().to_string();
            let seen = {
                let mut hits = hits.lock().unwrap();
                let n = hits.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            let _ = tx.send(Delivery { path: path.clone(), headers, body });
            async move {
                match path.as_str() {
                    "/ok" => (Status::OK, "thanks".to_string()),
                    "/gone" => (Status::GONE, "this endpoint was removed".to_string()),
                    "/fail" => (Status::INTERNAL_SERVER_ERROR, "broken".to_string()),
                    p if p.starts_with("/fail-once/") && seen == 1 => (Status::INTERNAL_SERVER_ERROR, "later".into()),
                    p if p.starts_with("/fail-once/") => (Status::OK, "thanks".into()),
                    _ => (Status::NOT_FOUND, "no such endpoint".to_string()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base, deliveries }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The next request; panics after the deadline.
    pub(crate) async fn next(&mut self) -> Delivery {
        match tokio::time::timeout(DEADLINE, self.deliveries.recv()).await {
            Ok(Some(d)) => d,
            _ => panic!("no delivery arrived within {DEADLINE:?}"),
        }
    }

    /// The next request, which must verify with `secret`.
    pub(crate) async fn next_verified(&mut self, secret: &str) -> Delivery {
        let d = self.next().await;
        verify(secret, &d.headers, &d.body).unwrap_or_else(|e| panic!("{e}: {d:?}"));
        d
    }

    /// Requests that arrived and were not taken yet.
    pub(crate) fn pending(&mut self) -> usize {
        std::iter::from_fn(|| self.deliveries.try_recv().ok()).count()
    }
}

async fn every_delivery_verifies_and_carries_its_payload_intact(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    let payloads = [
        json!({"type": "invoice.paid", "data": {"amount": 4200, "currency": "EUR", "lines": [1.5, -2, null, true]}}),
        json!({"text": "ünïcödé ✓ \"quoted\" \\ back\nslash", "big": 12345678901234567u64, "nested": {"a": {"b": []}}}),
        json!("just a string"),
    ];
    let plain = server
        .submit(json!({"kind": "webhook", "input": {
            "url": rx.url("/ok"), "payload": payloads[0], "secret": "partner"
        }}))
        .await;
    let custom = server
        .submit(json!({"kind": "webhook", "input": {
            "url": rx.url("/ok"), "payload": payloads[1], "secret": "partner", "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "event_type": "user.created", "headers": {"x-tenant": "acme"}
        }}))
        .await;
    let other = server
        .submit(json!({"kind": "webhook", "input": {
            "url": rx.url("/ok"), "payload": payloads[2], "secret": "billing"
        }}))
        .await;

    let mut got = HashMap::new();
    for _ in &payloads {
        let d = rx.next().await;
        // Each with its own secret only: the billing delivery does not verify as partner's.
        let under = if verify(SECRET, &d.headers, &d.body).is_ok() { SECRET } else { OTHER_SECRET };
        verify(under, &d.headers, &d.body).unwrap_or_else(|e| panic!("{e}: {d:?}"));
        assert_eq!(d.header("content-type"), "application/json");
        assert_eq!(d.path, "/ok");
        got.insert(d.id().to_string(), (d, under));
    }
    let (d, under) = &got[&plain];
    assert_eq!((d.payload(), *under), (payloads[0].clone(), SECRET), "the job id is the webhook-id");
    let (d, under) = &got["msg_p5jXN8AQM9LWM0D4loKWxJek"];
    assert_eq!((d.payload(), *under), (payloads[1].clone(), SECRET), "the input's id is the webhook-id");
    assert_eq!((d.header("ferry-event-type"), d.header("x-tenant")), ("user.created", "acme"));
    let (d, under) = &got[&other];
    assert_eq!((d.payload(), *under), (payloads[2].clone(), OTHER_SECRET));
    assert!(d.headers.get("ferry-event-type").is_none(), "{d:?}");

    // The check is no rubber stamp: a changed byte, id or timestamp fails it.
    let (d, _) = &got[&plain];
    let mut body = d.body.to_vec();
    body[1] ^= 1;
    assert!(verify(SECRET, &d.headers, &body).is_err());
    for (name, value) in [("webhook-id", "msg_other"), ("webhook-timestamp", &(d.timestamp() - 1).to_string())] {
        let mut headers = d.headers.clone();
        headers.insert(name, value.parse().unwrap());
        assert!(verify(SECRET, &headers, &d.body).is_err(), "{name} changed");
    }

    // Each job's output is its delivery record.
    let custom_id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    for (id, webhook_id) in [(plain.as_str(), plain.as_str()), (&custom, custom_id), (&other, &other)] {
        let job = server.wait_state(id, &["succeeded", "dead"]).await;
        assert_eq!((&job["state"], &job["queue"]), (&json!("succeeded"), &json!("webhook")), "{job:#}");
        let out = &job["output"];
        assert_eq!(
            (&out["status"], &out["response"], &out["webhook_id"]),
            (&json!(200), &json!("thanks"), &json!(webhook_id))
        );
        assert_eq!(out["timestamp"], json!(got[webhook_id].0.timestamp()), "{out}");
        assert!(out["latency_ms"].is_u64(), "{out}");
    }
    assert_eq!(rx.pending(), 0, "one delivery each");

    // Without a secret the delivery is the same, unsigned.
    let unsigned = server.submit(json!({"kind": "webhook", "input": {"url": rx.url("/ok"), "payload": [1]}})).await;
    let d = rx.next().await;
    assert_eq!((d.id(), d.payload()), (unsigned.as_str(), json!([1])));
    assert!(d.headers.get("webhook-signature").is_none() && d.timestamp() > 0, "{d:?}");
    server.stop().await;
}

async fn a_workflow_node_delivers_on_the_webhook_queue(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    let def = json!({"name": "notify", "nodes": [
        {"id": "make", "kind": "noop", "input": {"order": "{{ input.order }}"}},
        {"id": "tell", "kind": "webhook", "depends_on": ["make"],
         "input": {"url": rx.url("/ok"), "payload": "{{ nodes.make.output }}", "secret": "partner"}}
    ]});
    let (status, body) = server.post("/v1/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/v1/runs", json!({"workflow": "notify", "input": {"order": 17}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let d = rx.next_verified(SECRET).await;
    assert_eq!(d.payload(), json!({"order": 17}));
    let run = format!("/v1/runs/{}", body["id"].as_str().expect("a run id"));
    let run = poll("the run to end", async || {
        let (_, run) = server.get(&run).await;
        (run["state"] != "running").then_some(run)
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let tell = run["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "tell").expect("the node").clone();
    let job = server.job(tell["jobs"][0]["id"].as_str().expect("its job")).await;
    assert_eq!(job["queue"], "webhook", "a node without a queue takes its kind's: {job:#}");
    assert_eq!(job["output"]["webhook_id"], job["id"]);
    server.stop().await;
}

async fn ordered_deliveries_arrive_in_order_a_retry_holding_the_line(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    let quick = json!({"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": "none"});
    // The first delivery to the endpoint fails once; unordered, the others would overtake
    // its retry on the webhook queue's 20 slots.
    let specs = (0..3)
        .map(|n| {
            json!({"kind": "webhook", "max_attempts": 3, "backoff": quick, "input": {
                "url": rx.url("/fail-once/ordered"), "payload": {"n": n}, "secret": "partner", "ordered": true
            }})
        })
        .collect();
    let ids = server.submit_batch(specs).await;
    let job = server.job(&ids[0]).await;
    assert_eq!(job["ordering_key"], rx.url("/fail-once/ordered"), "the endpoint is the key: {job:#}");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.next_verified(SECRET).await.payload()["n"].clone());
    }
    assert_eq!(got, [json!(0), json!(0), json!(1), json!(2)], "in order, the retry first");
    for id in &ids {
        assert_eq!(server.wait_state(id, &["succeeded", "dead"]).await["state"], "succeeded");
    }
}

async fn a_retry_and_a_replay_keep_the_webhook_id(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    // A backoff of a whole second: the retry's timestamp (whole seconds) is a later one.
    let second = json!({"initial_ms": 1000, "max_ms": 1000, "multiplier": 1.0, "jitter": "none"});
    let id = server
        .submit(json!({"kind": "webhook", "max_attempts": 3, "backoff": second, "input": {
            "url": rx.url("/fail-once/retry"), "payload": {"n": 1}, "secret": "partner"
        }}))
        .await;
    let first = rx.next_verified(SECRET).await;
    let retry = rx.next_verified(SECRET).await;
    assert_eq!((first.id(), retry.id()), (id.as_str(), id.as_str()), "a retry keeps the id");
    assert!(retry.timestamp() > first.timestamp(), "a retry is signed at its own time");
    assert_eq!(first.body, retry.body);
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    // The delivery log: each attempt's outcome, the last one's record in the output.
    let log = attempts(&job);
    assert_eq!((&log[0]["outcome"], &log[1]["outcome"]), (&json!("failed"), &json!("succeeded")), "{job:#}");
    assert_eq!((&log[0]["error"]["type"], &log[0]["error"]["retryable"]), (&json!("http_status"), &json!(true)));
    let message = log[0]["error"]["message"].as_str().expect("a message");
    assert!(message.contains("/fail-once/retry answered 500"), "{message}");
    assert_eq!((&job["output"]["status"], &job["output"]["timestamp"]), (&json!(200), &json!(retry.timestamp())));

    // A dead delivery replayed is the same message again: the same id, a new timestamp.
    let id = server
        .submit(json!({"kind": "webhook", "max_attempts": 1, "input": {
            "url": rx.url("/fail-once/replay"), "payload": {"n": 2}, "secret": "partner"
        }}))
        .await;
    let dead = rx.next_verified(SECRET).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(job["output"]["status"], 500, "a failed attempt keeps its record: {job:#}");
    poll("the clock to pass the dead attempt's second", async || {
        (chrono::Utc::now().timestamp() > dead.timestamp()).then_some(())
    })
    .await;
    let (status, body) = server.post(&format!("/v1/jobs/{id}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replayed = rx.next_verified(SECRET).await;
    assert_eq!(replayed.id(), id, "a replay keeps the id");
    assert!(replayed.timestamp() > dead.timestamp());
    assert_eq!(replayed.body, dead.body);
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(attempts(&job).len(), 2, "{job:#}");
    server.stop().await;
}

async fn gone_is_dead_after_one_attempt_and_disables_the_endpoint(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    let tiny = json!({"initial_ms": 5, "max_ms": 5, "multiplier": 1.0, "jitter": "none"});
    let id = server
        .submit(json!({"kind": "webhook", "max_attempts": 5, "backoff": tiny, "input": {
            "url": rx.url("/gone"), "payload": {"bye": true}, "secret": "partner"
        }}))
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(attempts(&job).len(), 1, "not retried despite attempts left: {job:#}");
    assert_eq!((&job["error"]["type"], &job["error"]["retryable"]), (&json!("http_status"), &json!(false)));
    let message = job["error"]["message"].as_str().expect("a message");
    assert!(message.contains("410") && message.contains("gone"), "{message}");
    assert_eq!(
        (&job["output"]["status"], &job["output"]["response"]),
        (&json!(410), &json!("this endpoint was removed"))
    );
    rx.next_verified(SECRET).await;
    assert_eq!(rx.pending(), 0, "one delivery, and the job is final");

    // The 410 disabled the endpoint's breaker: the next delivery to it dies at once,
    // without a request; other endpoints of the host go on.
    let key = format!("{}/gone", rx.url(""));
    let path = format!("/v1/breakers/{}", key.replace(':', "%3A").replace('/', "%2F"));
    let (_, b) = server.get(&path).await;
    assert_eq!(b["state"], "disabled", "{b:#}");
    let spec = |p: &str| json!({"kind": "webhook", "input": {"url": rx.url(p), "payload": {}, "secret": "partner"}});
    let again = server.submit(spec("/gone")).await;
    let job = server.wait_state(&again, &["succeeded", "dead"]).await;
    assert_eq!(job["error"]["type"], "circuit_open", "{job:#}");
    let other = server.submit(spec("/ok")).await;
    assert_eq!(server.wait_state(&other, &["succeeded", "dead"]).await["state"], "succeeded");
    rx.next_verified(SECRET).await;
    assert_eq!(rx.pending(), 0, "only the other endpoint was called");
    // An operator's reset enables it again.
    let reset = server.client().put(format!("{}{path}", server.url())).json(&json!({"reset": true})).send().await;
    assert!(reset.expect("an answer").status().is_success());
    let replayed = server.post(&format!("/v1/jobs/{again}/replay"), json!({})).await;
    assert!(replayed.0.is_success(), "{replayed:?}");
    assert_eq!(server.wait_state(&again, &["succeeded", "dead"]).await["state"], "dead", "the endpoint still says 410");
    rx.next_verified(SECRET).await;
    server.stop().await;
}

async fn the_webhook_queue_serves_while_default_is_full(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, |cfg| {
        with_secrets(cfg);
        cfg.queues.get_mut("default").expect("default").concurrency = Some(2);
    })
    .await;
    let sleeps =
        server.submit_batch(vec![json!({"kind": "sleep", "input": {"ms": 600000}, "timeout_ms": 700000}); 2]).await;
    for id in &sleeps {
        server.wait_state(id, &["running"]).await;
    }
    let waiting = server.submit(json!({"kind": "noop"})).await;
    let hook = server
        .submit(json!({"kind": "webhook", "input": {"url": rx.url("/ok"), "payload": {"k": 1}, "secret": "partner"}}))
        .await;
    rx.next_verified(SECRET).await;
    let job = server.wait_state(&hook, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["queue"]), (&json!("succeeded"), &json!("webhook")), "{job:#}");
    for id in &sleeps {
        assert_eq!(server.job(id).await["state"], "running", "default stayed full throughout");
    }
    let noop = server.job(&waiting).await;
    assert_ne!(noop["state"], "succeeded", "default had no slot for its own job: {noop:#}");
    // The waiting job first: each cancelled sleep frees a slot for it.
    for id in [&waiting].into_iter().chain(&sleeps) {
        let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.stop().await;
}

async fn an_unknown_secret_is_refused_naming_the_field(backend: Backend) {
    let server = TestServer::start_with(backend, with_secrets).await;
    let input = json!({"url": "https://hooks.example.com/x", "payload": {}, "secret": "nope"});
    let got = server.post("/v1/jobs", json!({"kind": "webhook", "input": input})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.secret"));
    assert_eq!(got.1["error"]["message"], "unknown secret `nope`; configured: billing, partner", "{}", got.1);
    let got = server.post("/v1/jobs/batch", json!({"jobs": [{"kind": "webhook", "input": input}]})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("jobs[0].input.secret"));
    let def = json!({"name": "w", "nodes": [{"id": "a", "kind": "webhook", "input": input}]});
    let got = server.post("/v1/workflows", def).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("nodes[0].input.secret"));
    let got = server.post("/v1/jobs", json!({"kind": "webhook", "input": {"payload": 1}})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.url"));
    assert_eq!(server.count_jobs().await, 0, "nothing was stored");
    server.stop().await;
}

async fn the_secret_is_never_shown(backend: Backend) {
    let mut rx = Receiver::start().await;
    let server = TestServer::start_with(backend, with_secrets).await;
    let delivered = server
        .submit(json!({"kind": "webhook", "input": {"url": rx.url("/ok"), "payload": {"a": 1}, "secret": "partner"}}))
        .await;
    let failed = server
        .submit(json!({"kind": "webhook", "max_attempts": 1, "input": {
            "url": rx.url("/fail"), "payload": {"a": 2}, "secret": "billing"
        }}))
        .await;
    server.wait_state(&delivered, &["succeeded"]).await;
    server.wait_state(&failed, &["dead"]).await;
    let keys: Vec<&str> = [SECRET, OTHER_SECRET].iter().map(|s| s.trim_start_matches("whsec_")).collect();
    for id in [&delivered, &failed] {
        let (_, job) = server.get_text(&format!("/v1/jobs/{id}")).await;
        let (_, events) = server.get_text(&format!("/v1/jobs/{id}/events")).await;
        for text in [&job, &events] {
            assert!(keys.iter().all(|k| !text.contains(k)), "a secret shows in {text}");
        }
        assert!(job.contains(r#""secret":"partner""#) || job.contains(r#""secret":"billing""#), "only its name: {job}");
    }
    let (_, list) = server.get_text("/v1/jobs").await;
    assert!(keys.iter().all(|k| !list.contains(k)), "{list}");
    rx.next().await;
    rx.next().await;
    server.stop().await;
}
