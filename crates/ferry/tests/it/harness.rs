//! The harness: a real Ferry server (store, engine and HTTP API) per test, on a free port
//! and a fresh temporary data directory, with helpers that poll with a deadline instead of
//! sleeping. Every test runs once per storage backend ([`both!`]): on SQLite in its data
//! directory, and on PostgreSQL in a schema of its own (dropped afterwards), so that tests
//! run in parallel on one database.

use chrono::{DateTime, Utc};
use ferry::app::Server;
use ferry::config::Config;
use ferry_store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The pause between two polls.
const PAUSE: Duration = Duration::from_millis(10);
/// The PostgreSQL the tests use unless `FERRY_TEST_DATABASE_URL` names another.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long connecting to PostgreSQL (to probe it, or to drop a schema) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Generates, for each named `async fn name(backend: Backend)`, a module `name` with two
/// tests: `name::sqlite` and `name::postgres`. The PostgreSQL one returns at once, saying
/// so on stderr, when PostgreSQL does not answer, unless `CI=true`: then it fails.
macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use crate::harness::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if crate::harness::postgres_available().await {
                    super::$name(Backend::Postgres).await;
                }
            }
        }
    )+};
}
pub(crate) use both;

/// Where a test server keeps its jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the server's data directory.
    Sqlite,
    /// PostgreSQL at `FERRY_TEST_DATABASE_URL`, in a fresh schema.
    Postgres,
}

impl Backend {
    /// The name the server reports for its store (`/readyz`, `Store::backend`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL URL of the tests: `FERRY_TEST_DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("FERRY_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or(DEFAULT_DATABASE_URL.into())
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Whether the PostgreSQL tests can run. Asked once per process (the answer is kept).
/// When PostgreSQL does not answer, this panics if `CI` is `true` (there the PostgreSQL
/// tests must run, never skip), and otherwise says so on stderr and answers `false`.
pub async fn postgres_available() -> bool {
    static PROBE: tokio::sync::OnceCell<Result<(), String>> = tokio::sync::OnceCell::const_new();
    let url = database_url();
    let probe = PROBE
        .get_or_init(|| async {
            let mut conn = connect(&url).await?;
            sqlx::query("SELECT 1").execute(&mut conn).await.map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(())
        })
        .await;
    let Err(why) = probe else { return true };
    let url = ferry::config::redact_password(&url);
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true, so the PostgreSQL tests must run, but PostgreSQL at {url} is unavailable: {why} \
             (set FERRY_TEST_DATABASE_URL to a reachable database)"
        );
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        // Straight to the process's stderr: the test harness would capture `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** skipping: PostgreSQL at {url} unavailable ({why}); every `…::postgres` test passes \
             without running. Set FERRY_TEST_DATABASE_URL, or CI=true to make this an error. ***\n"
        );
    });
    eprintln!("skipping: PostgreSQL at {url} unavailable");
    false
}

/// A test's own PostgreSQL schema, dropped (with everything in it) when this is released
/// or dropped. Best effort: a failure to drop is reported, never fatal.
struct Schema {
    url: String,
    name: String,
    released: bool,
}

impl Schema {
    /// A fresh schema name: `t_` and 16 random hex digits (what `valid_schema` accepts).
    fn new(url: String) -> Schema {
        let random = uuid::Uuid::now_v7().as_u128() as u64; // the v7's counter and random bits
        Schema { url, name: format!("t_{random:016x}"), released: false }
    }

    async fn drop_schema(url: &str, name: &str) -> Result<(), String> {
        let mut conn = connect(url).await?;
        let result = async {
            // A server that was not stopped (a failed test) may still hold locks briefly.
            sqlx::query("SET lock_timeout = '5s'").execute(&mut conn).await?;
            // `name` is `t_` and hex digits (see `Schema::new`).
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))).execute(&mut conn).await
        }
        .await;
        let _ = conn.close().await;
        result.map(drop).map_err(|e| e.to_string())
    }

    /// Drops the schema now (once the server using it has stopped).
    async fn release(mut self) {
        self.released = true;
        if let Err(e) = Schema::drop_schema(&self.url, &self.name).await {
            eprintln!("warning: cannot drop the test schema {}: {e}", self.name);
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Not released: the test failed or never stopped its server. Drop cannot await, so
        // the schema is dropped on a thread with its own runtime; meanwhile `block_in_place`
        // hands this worker's tasks (maybe the server's, still running) to the other worker.
        let (url, name) = (self.url.clone(), self.name.clone());
        let work = move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = match runtime {
                Ok(rt) => rt.block_on(Schema::drop_schema(&url, &name)),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                eprintln!("warning: cannot drop the test schema {name}: {e}");
            }
        };
        let thread = std::thread::spawn(work);
        let in_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if in_multi_thread_runtime {
            let _ = tokio::task::block_in_place(|| thread.join());
        } else {
            let _ = thread.join();
        }
    }
}

/// A Ferry server running in this process, on its own data directory (and, on PostgreSQL,
/// its own schema).
pub struct TestServer {
    server: Option<Server>,
    /// The server's store, for tests that act as a worker themselves.
    pub store: Arc<dyn Store>,
    url: String,
    client: reqwest::Client,
    cfg: Config,
    // Dropped after the server: its tables live here (PostgreSQL only).
    schema: Option<Schema>,
    // Dropped last: the store's files live here.
    _dir: TempDir,
}

/// An HTTP client for tests (and for stand-in servers' callers).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().expect("cannot build an HTTP client")
}

impl TestServer {
    /// A server on `backend` with the test defaults.
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, |_| {}).await
    }

    /// A server on `backend` with the test defaults, then `tweak` applied to its
    /// configuration.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("cannot create a temporary data directory");
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            data_dir: dir.path().to_path_buf(),
            lease_ms: 3000,
            heartbeat_ms: 500,
            poll_ms: 200,
            reap_ms: 200,
            shutdown_grace_ms: 2000,
            // The test binary is not `ferry`: the sandbox helper is the built binary.
            exec_helper: Some(std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferry"))),
            ..Config::default()
        };
        let schema = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let schema = Schema::new(database_url());
                cfg.database_url = Some(schema.url.clone());
                cfg.database_schema = Some(schema.name.clone());
                Some(schema)
            }
        };
        tweak(&mut cfg);
        TestServer::open(cfg, schema, dir).await
    }

    async fn open(cfg: Config, schema: Option<Schema>, dir: TempDir) -> TestServer {
        cfg.validate().expect("the test configuration is valid");
        let server = ferry::app::start(&cfg).await.expect("the server starts");
        TestServer {
            store: server.store.clone(),
            url: server.url(),
            server: Some(server),
            client: client(),
            cfg,
            schema,
            _dir: dir,
        }
    }

    /// Drains and stops the server, then starts a new one on the same data directory (or
    /// PostgreSQL schema), on a new port, with `tweak` applied to the configuration.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("the server stops cleanly");
        }
        let TestServer { mut cfg, schema, _dir: dir, store, .. } = self;
        // The data directory stays locked while anything holds the old store.
        drop(store);
        tweak(&mut cfg);
        TestServer::open(cfg, schema, dir).await
    }

    /// Another node on the same PostgreSQL schema (its own data directory and port), with
    /// `tweak` applied; the schema stays this server's to drop.
    pub async fn peer(&self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        assert!(self.cfg.database_url.is_some(), "peers share a PostgreSQL schema");
        let dir = tempfile::tempdir().expect("cannot create a temporary data directory");
        let mut cfg = self.cfg.clone();
        cfg.data_dir = dir.path().to_path_buf();
        cfg.listen = "127.0.0.1:0".parse().expect("valid address");
        tweak(&mut cfg);
        TestServer::open(cfg, None, dir).await
    }

    /// Creates an API token straight in the store (as `ferry token create` does) and
    /// returns (its id, its secret).
    pub async fn token(&self, workspace: &str, user: &str, role: ferry_core::auth::Role) -> (String, String) {
        let secret = ferry_core::auth::new_token();
        let t = self
            .store
            .create_token(ferry_store::NewToken {
                id: uuid::Uuid::now_v7(),
                workspace: workspace.into(),
                user: user.into(),
                role,
                hash: ferry_core::auth::token_hash(&secret),
            })
            .await
            .expect("the token is stored");
        (t.id.to_string(), secret)
    }

    /// A request with a bearer token.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("the server answers")).await
    }

    /// The server's configuration.
    pub fn cfg(&self) -> &Config {
        &self.cfg
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

    /// The escalation evaluator's count of finished evaluations (a test signal); panics
    /// when the server has no escalation rules.
    pub fn escalation_ticks(&self) -> tokio::sync::watch::Receiver<u64> {
        let escalation = self.server.as_ref().and_then(|s| s.escalation.as_ref());
        escalation.expect("the server evaluates escalation rules").ticks()
    }

    /// The scheduler's count of finished passes (a test signal).
    pub fn scheduler_passes(&self) -> tokio::sync::watch::Receiver<u64> {
        let scheduler = self.server.as_ref().and_then(|s| s.scheduler.as_ref());
        scheduler.expect("a `ferry server` runs a scheduler").passes()
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

    /// PUTs a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.client.put(format!("{}{path}", self.url)).json(&body).send().await.expect("the server answers"))
            .await
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

    /// Drains and stops the server, then drops its PostgreSQL schema.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("the server stops cleanly");
        }
        let TestServer { schema, store, .. } = self;
        drop(store);
        if let Some(schema) = schema {
            schema.release().await;
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

/// Cuts every PostgreSQL connection of the server (`application_name` `ferry:<node>`,
/// so give the server a node name of its own): what its pool sees when the database
/// restarts. Returns how many were cut.
pub async fn cut_database(srv: &TestServer) -> usize {
    let mut conn = connect(&database_url()).await.expect("a connection of the test's own");
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(format!("ferry:{}", srv.cfg().node))
    .fetch_all(&mut conn)
    .await
    .expect("pg_terminate_backend");
    let _ = conn.close().await;
    cut.into_iter().filter(|&ok| ok).count()
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
