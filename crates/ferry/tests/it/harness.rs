//! The harness: a real Ferry server (store, engine and HTTP API) per test, on a free port
//! and a fresh temporary data directory, with helpers that poll with a deadline instead of
//! sleeping.

use chrono::{DateTime, Utc};
use ferry::app::Server;
use ferry::config::Config;
use ferry_store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The pause between two polls.
const PAUSE: Duration = Duration::from_millis(10);

/// A Ferry server running in this process, on its own data directory.
pub struct TestServer {
    server: Option<Server>,
    /// The server's store, for tests that act as a worker themselves.
    pub store: Arc<dyn Store>,
    url: String,
    client: reqwest::Client,
    cfg: Config,
    // Dropped last: the store's files live here.
    _dir: TempDir,
}

/// An HTTP client for tests (and for stand-in servers' callers).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().expect("cannot build an HTTP client")
}

impl TestServer {
    /// A server with the test defaults.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with the test defaults, then `tweak` applied to its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("cannot create a temporary data directory");
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            data_dir: dir.path().to_path_buf(),
            lease_ms: 3000,
            heartbeat_ms: 500,
            poll_ms: 200,
            reap_ms: 200,
            shutdown_grace_ms: 2000,
            ..Config::default()
        };
        tweak(&mut cfg);
        TestServer::open(cfg, dir).await
    }

    async fn open(cfg: Config, dir: TempDir) -> TestServer {
        cfg.validate().expect("the test configuration is valid");
        let server = ferry::app::start(&cfg).await.expect("the server starts");
        TestServer {
            store: server.store.clone(),
            url: server.url(),
            server: Some(server),
            client: client(),
            cfg,
            _dir: dir,
        }
    }

    /// Drains and stops the server, then starts a new one on the same data directory
    /// (on a new port), with `tweak` applied to the configuration.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("the server stops cleanly");
        }
        let TestServer { mut cfg, _dir: dir, store, .. } = self;
        // The data directory stays locked while anything holds the old store.
        drop(store);
        tweak(&mut cfg);
        TestServer::open(cfg, dir).await
    }

    /// The API's base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP client the helpers use (cheap to clone).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Attempts the embedded engine is running right now.
    pub fn engine_running(&self) -> usize {
        self.server.as_ref().and_then(|s| s.engine.as_ref()).map_or(0, |e| e.running())
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_with(path, body, &[]).await
    }

    /// POSTs a JSON body with extra headers.
    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}{path}", self.url)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        answer(req.send().await.expect("the server answers")).await
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post_raw(&self, path: &str, bytes: impl Into<Vec<u8>>, content_type: &str) -> (StatusCode, Value) {
        let req = self
            .client
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes.into());
        answer(req.send().await.expect("the server answers")).await
    }

    /// GETs a JSON answer (a body that is not JSON comes back as a string value).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.client.get(format!("{}{path}", self.url)).send().await.expect("the server answers")).await
    }

    /// GETs a text answer.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let resp = self.client.get(format!("{}{path}", self.url)).send().await.expect("the server answers");
        let status = resp.status();
        (status, resp.text().await.expect("a readable body"))
    }

    /// Submits one job, expecting 201, and returns its id.
    pub async fn submit(&self, spec: Value) -> String {
        let (status, body) = self.post("/v1/jobs", spec.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "submitting {spec} answered {body}");
        assert_eq!(body["created"], json!(true), "{body}");
        body["id"].as_str().expect("an id").to_string()
    }

    /// Submits a batch, expecting 201, and returns the ids in order.
    pub async fn submit_batch(&self, specs: Vec<Value>) -> Vec<String> {
        let n = specs.len();
        let (status, body) = self.post("/v1/jobs/batch", json!({ "jobs": specs })).await;
        assert_eq!(status, StatusCode::CREATED, "batch answered {body}");
        let ids: Vec<String> =
            body["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id").to_string()).collect();
        assert_eq!(ids.len(), n);
        ids
    }

    /// GET /v1/jobs/{id}, expecting 200.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET job {id} answered {body}");
        body
    }

    /// The job's events, expecting 200.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/jobs/{id}/events")).await;
        assert_eq!(status, StatusCode::OK, "GET events of {id} answered {body}");
        body["events"].as_array().expect("events").clone()
    }

    /// The job's event types, in order.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.events(id).await.iter().map(|e| e["type"].as_str().expect("type").to_string()).collect()
    }

    /// Polls the job until its state is one of `states`; panics after [`DEADLINE`].
    pub async fn wait_state(&self, id: &str, states: &[&str]) -> Value {
        let what = format!("job {id} to be in one of {states:?}");
        self.wait_job(id, &what, |j| states.iter().any(|s| j["state"] == *s)).await
    }

    /// Polls the job until `done` holds; panics after [`DEADLINE`] showing the last view.
    pub async fn wait_job(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(started.elapsed() < DEADLINE, "gave up waiting for {what}; last seen: {job:#}");
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Every job, paging through the listing.
    pub async fn all_jobs(&self) -> Vec<Value> {
        let mut items = Vec::new();
        let mut path = "/v1/jobs?limit=1000".to_string();
        loop {
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => path = format!("/v1/jobs?limit=1000&cursor={c}"),
                None => return items,
            }
        }
    }

    /// How many jobs the server holds.
    pub async fn count_jobs(&self) -> usize {
        self.all_jobs().await.len()
    }

    /// Drains and stops the server.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("the server stops cleanly");
        }
    }
}

async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("a readable body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Polls `probe` until it yields a value; panics after [`DEADLINE`].
pub async fn poll<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "gave up waiting for {what}");
        tokio::time::sleep(PAUSE).await;
    }
}

/// Parses an RFC 3339 timestamp of an API answer.
pub fn ts(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("expected a timestamp, got {v}"));
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}")).with_timezone(&Utc)
}

/// Asserts an error answer: status, `error.code` and `error.field` (`None`: no field).
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, field: Option<&str>) {
    let (s, body) = got;
    assert_eq!(*s, status, "wrong status; body: {body}");
    assert_eq!(body["error"]["code"], json!(code), "wrong code; body: {body}");
    match field {
        Some(f) => assert_eq!(body["error"]["field"], json!(f), "wrong field; body: {body}"),
        None => assert!(body["error"].get("field").is_none(), "unexpected field; body: {body}"),
    }
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message; body: {body}");
}

/// The attempts of a job view.
pub fn attempts(job: &Value) -> &Vec<Value> {
    job["attempts"].as_array().unwrap_or_else(|| panic!("no attempts in {job}"))
}
