//! Pins the promises of a Ferry cluster on one PostgreSQL database: API-only nodes and
//! `ferry worker` processes share the work; `kill -9` of a worker loses no acknowledged
//! job, its running jobs come back with `worker_lost` and no job has two accepted results;
//! processes resume by themselves after the database cuts their connections; and
//! `GET /v1/workers` lists the live workers with their queues and concurrency.
//!
//! These tests run the real `ferry` binary as child processes against the PostgreSQL at
//! `FERRY_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), each test
//! in a schema of its own (dropped at the end), so they run in parallel. Without
//! PostgreSQL they are skipped with a loud message, unless `CI=true`.
//!
//! Two regressions are pinned too: a worker cut off from the database for longer than its
//! lease still gets every job finished (its heartbeat must not renew a job it gave up
//! on), and nodes started together on a fresh schema all start.

use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Bounds every wait; it only catches hangs (the machine may be slow and busy).
const DEADLINE: Duration = Duration::from_secs(240);

/// Short leases so that a killed worker's jobs come back quickly.
const FAST_LEASES: &[(&str, &str)] =
    &[("FERRY_LEASE_MS", "3000"), ("FERRY_HEARTBEAT_MS", "500"), ("FERRY_REAP_MS", "500")];

/// The test's database: the URL, a fresh schema name and a connection pool of its own.
struct Db {
    url: String,
    schema: String,
    pool: PgPool,
}

/// Connects to the test database, or says why not: `None` means "skip this test".
async fn database() -> Option<Db> {
    let url = std::env::var("FERRY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string());
    // One plain connection first: a refused connection fails at once, where a pool would
    // keep retrying until its timeout.
    let connect = async {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&url).await?.close().await?;
        PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(30)).connect(&url).await
    };
    let why = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(pool)) => {
            let schema = format!("t_{:016x}", random_u64());
            eprintln!("cluster test schema: {schema}");
            return Some(Db { url, schema, pool });
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 30 s".to_string(),
    };
    let shown = ferry::config::redact_password(&url);
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("PostgreSQL at {shown} is unavailable ({why}); under CI these tests must run");
    }
    eprintln!(
        "\n********\n*** skipping: PostgreSQL unavailable at {shown} ({why}); \
         set FERRY_TEST_DATABASE_URL to run the cluster tests\n********\n"
    );
    None
}

fn random_u64() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

impl Db {
    /// `sql` with `{s}` replaced by the test's schema name (lowercase hex: safe to splice).
    fn sql(&self, sql: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(sql.replace("{s}", &self.schema))
    }

    /// Cuts every connection whose application name is `ferry:<node>`; returns how many.
    async fn terminate_backends(&self, node: &str) -> usize {
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(format!("ferry:{node}"))
        .fetch_all(&self.pool)
        .await
        .expect("pg_terminate_backend");
        cut.into_iter().filter(|&ok| ok).count()
    }

    /// How many connections `ferry:<node>` has open.
    async fn backends(&self, node: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(format!("ferry:{node}"))
            .fetch_one(&self.pool)
            .await
            .expect("count backends")
    }
}

impl Drop for Db {
    /// Drops the schema, best-effort, on a connection of its own (this may run while a
    /// failed test unwinds, inside its runtime, so on a thread with a runtime of its own).
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query("SET lock_timeout = '20s'").execute(&mut conn).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test schema {}", self.schema);
        }
    }
}

/// A `ferry` child process and the base URL it printed. Killed if still running when
/// dropped (a failed test leaves no process behind).
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `ferry <args>` on `database` (the test's database, maybe through a proxy) in the
/// test's schema, with `FERRY_NODE=node`, on an ephemeral port, and reads the address from
/// the line it prints once ready.
fn spawn(db: &Db, database: &str, args: &[&str], node: &str, env: &[(&str, &str)]) -> Proc {
    launch(db, database, args, node, env).ready()
}

/// A `ferry` child process that has not said it is ready yet (killed if dropped so).
struct Launching {
    child: Option<Child>,
    first_line: mpsc::Receiver<String>,
    what: String,
}

/// Starts `ferry <args>` (see [`spawn`]) without waiting for it.
fn launch(db: &Db, database: &str, args: &[&str], node: &str, env: &[(&str, &str)]) -> Launching {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .args(["--database", database, "--listen", "127.0.0.1:0"])
        .env("FERRY_DATABASE_SCHEMA", &db.schema)
        .env("FERRY_NODE", node)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    let stdout = child.stdout.take().expect("stdout");
    // Read the first line on a thread (so that waiting for it has a deadline), then keep
    // draining stdout so that the child never writes into a closed pipe.
    let (tx, first_line) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    Launching { child: Some(child), first_line, what: format!("ferry {}", args.join(" ")) }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            drop(Proc { child, url: String::new() });
        }
    }
}

impl Launching {
    /// Waits for the line with the address; panics (naming the exit status, if the process
    /// ended) when none comes.
    fn ready(mut self) -> Proc {
        // Owned by a Proc from here on, so that it is killed if this panics.
        let mut proc = Proc { child: self.child.take().expect("not started twice"), url: String::new() };
        let line = self.first_line.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        match line.split_whitespace().find_map(|w| w.strip_prefix("http://")) {
            Some(addr) => proc.url = format!("http://{}", addr.trim_end_matches(|c: char| !c.is_ascii_digit())),
            None => {
                // Its stdout closed: give it a moment to exit, to show how it ended.
                let status = (0..50).find_map(|_| {
                    let status = proc.child.try_wait().ok().flatten();
                    if status.is_none() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    status
                });
                panic!(
                    "`{}` did not start (exit status {status:?}; its stderr is above); first line: {line:?}",
                    self.what
                )
            }
        }
        proc
    }
}

fn api_node(db: &Db, node: &str, env: &[(&str, &str)]) -> Proc {
    spawn(db, &db.url, &["server", "--workers", "0"], node, env)
}

fn worker(db: &Db, node: &str, concurrency: usize, env: &[(&str, &str)]) -> Proc {
    worker_via(db, &db.url, node, concurrency, env)
}

/// A worker process that reaches the database at `database`.
fn worker_via(db: &Db, database: &str, node: &str, concurrency: usize, env: &[(&str, &str)]) -> Proc {
    spawn(db, database, &["worker", "--queue", "default", "--concurrency", &concurrency.to_string()], node, env)
}

/// A TCP proxy in front of PostgreSQL that a test can take down: then every connection
/// through it is cut and new ones are refused, as when the database goes away; brought
/// back up, it forwards again. Blocking I/O on threads of its own, so it keeps working
/// whatever the test's runtime does.
struct DbProxy {
    /// The database URL, pointed at the proxy.
    url: String,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    down: bool,
    stopped: bool,
    /// Both ends of every connection made through the proxy, to cut them.
    streams: Vec<TcpStream>,
}

impl DbProxy {
    /// `None` when the URL's host and port cannot be found (e.g. a Unix socket URL).
    fn start(database_url: &str) -> Option<DbProxy> {
        let (scheme, rest) = database_url.split_once("://")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (format!("{auth}@"), rest),
            None => (String::new(), rest),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, tail) = rest.split_at(end);
        if host.is_empty() || host.contains(',') {
            return None;
        }
        let target = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host.to_string()
        } else {
            format!("{host}:5432")
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        listener.set_nonblocking(true).ok()?;
        let url = format!("{scheme}://{auth}{}{tail}", listener.local_addr().ok()?);
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            loop {
                let inbound = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        if shared.lock().unwrap().stopped {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let outbound = match TcpStream::connect(&target) {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let mut st = shared.lock().unwrap();
                if st.down || st.stopped || inbound.set_nonblocking(false).is_err() {
                    continue; // dropped: the connection is refused
                }
                let (Ok(a), Ok(b), Ok(c), Ok(d)) =
                    (inbound.try_clone(), inbound.try_clone(), outbound.try_clone(), outbound.try_clone())
                else {
                    continue;
                };
                st.streams.extend([a, c]);
                pump(inbound, outbound);
                pump(d, b);
            }
        });
        Some(DbProxy { url, state })
    }

    fn set_down(&self, down: bool) {
        let mut st = self.state.lock().unwrap();
        st.down = down;
        if down {
            for s in st.streams.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.set_down(true);
        self.state.lock().unwrap().stopped = true;
    }
}

/// Copies `from` into `to` on a thread until either end closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// SIGTERM, then the process must exit 0.
async fn stop(mut p: Proc) {
    let status = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(status.success(), "ferry at {} exited with {status} after SIGTERM", p.url);
            return;
        }
        assert!(Instant::now() < deadline, "ferry at {} did not exit after SIGTERM", p.url);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// GET, answered 2xx, as JSON. A transport error or a 503 (the store unavailable, e.g.
/// while the database cuts connections) is retried until the deadline; any other status
/// fails the test.
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let why = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => return v,
                Err(e) => e.to_string(),
            },
            Ok(r) if r.status() == 503 => format!("503: {}", r.text().await.unwrap_or_default()),
            Ok(r) => panic!("GET {url} answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "GET {url} kept failing; last: {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `default` queue's counts.
async fn queue_counts(http: &reqwest::Client, url: &str) -> Value {
    let v = get_json(http, &format!("{url}/v1/queues")).await;
    v["queues"].as_array().unwrap().iter().find(|q| q["name"] == "default").cloned().unwrap()
}

/// Jobs not finished yet.
/// Waits until some job of the default queue runs.
async fn wait_for_running(http: &reqwest::Client, url: &str) {
    poll("jobs to be running", async |last| {
        let q = queue_counts(http, url).await;
        *last = q.to_string();
        q["running"].as_u64().unwrap() > 0
    })
    .await;
}

fn open(q: &Value) -> u64 {
    ["depth", "running", "scheduled", "retrying"].iter().map(|k| q[*k].as_u64().unwrap()).sum()
}

/// Polls `f` until it holds; `what` names the wait in the failure, with the last state
/// `f` reported.
async fn poll<F: AsyncFnMut(&mut String) -> bool>(what: &str, f: F) {
    poll_within(DEADLINE, what, f).await
}

async fn poll_within<F: AsyncFnMut(&mut String) -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while !f(&mut last).await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last seen: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `default` queue holds no unfinished job; asserts none died.
async fn wait_until_all_finished(http: &reqwest::Client, url: &str) {
    poll("every job to finish", async |last| {
        let q = queue_counts(http, url).await;
        *last = q.to_string();
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
}

/// Submits `n` copies of `spec` in batches of up to 1000, through `apis` in turn; returns
/// the acknowledged ids.
async fn submit(http: &reqwest::Client, apis: &[&str], spec: Value, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut turn = 0;
    while ids.len() < n {
        let size = (n - ids.len()).min(1000);
        let jobs: Vec<Value> = (0..size).map(|_| spec.clone()).collect();
        let api = apis[turn % apis.len()];
        turn += 1;
        let resp = http.post(format!("{api}/v1/jobs/batch")).json(&json!({"jobs": jobs})).send().await.unwrap();
        assert_eq!(resp.status(), 201, "batch through {api}: {}", resp.text().await.unwrap_or_default());
        let body: Value = resp.json().await.unwrap();
        let accepted = body["jobs"].as_array().unwrap();
        assert_eq!(accepted.len(), size);
        ids.extend(accepted.iter().map(|j| j["id"].as_str().unwrap().to_string()));
    }
    ids
}

/// Every job id in `state`, through `GET /v1/jobs` and its cursor.
async fn ids_in_state(http: &reqwest::Client, url: &str, state: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut u = format!("{url}/v1/jobs?state={state}&limit=1000");
        if let Some(c) = &cursor {
            u.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(http, &u).await;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["state"], state);
            ids.insert(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

/// Asserts every acknowledged job is listed as succeeded.
async fn assert_all_succeeded(http: &reqwest::Client, url: &str, acknowledged: &[String]) {
    let succeeded = ids_in_state(http, url, "succeeded").await;
    let missing: Vec<_> = acknowledged.iter().filter(|id| !succeeded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs did not succeed, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    assert_eq!(succeeded.len(), acknowledged.len(), "no job beyond the acknowledged ones exists");
}

/// `GET /v1/jobs/{id}` for every id, 8 at a time spread over `apis`.
async fn get_jobs(http: &reqwest::Client, apis: &[&str], ids: &[String]) -> Vec<Value> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = ids.len().div_ceil(8).max(1);
    for (i, part) in ids.chunks(chunk).enumerate() {
        let (http, api, part) = (http.clone(), apis[i % apis.len()].to_string(), part.to_vec());
        tasks.spawn(async move {
            let mut jobs = Vec::with_capacity(part.len());
            for id in part {
                jobs.push(get_json(&http, &format!("{api}/v1/jobs/{id}")).await);
            }
            jobs
        });
    }
    let mut all = Vec::with_capacity(ids.len());
    while let Some(part) = tasks.join_next().await {
        all.extend(part.expect("a GET task panicked"));
    }
    all
}

/// The live workers, by node.
async fn workers_by_node(http: &reqwest::Client, url: &str) -> HashMap<String, Value> {
    let v = get_json(http, &format!("{url}/v1/workers")).await;
    v["workers"].as_array().unwrap().iter().map(|w| (w["node"].as_str().unwrap().to_string(), w.clone())).collect()
}

/// Asserts a finished job's attempts: every attempt ended, and exactly one, the last,
/// succeeded (no job had two results accepted).
fn assert_one_success(job: &Value) {
    assert_eq!(job["state"], "succeeded", "{job}");
    let attempts = job["attempts"].as_array().unwrap_or_else(|| panic!("no attempts: {job}"));
    let wins = attempts.iter().filter(|a| a["outcome"] == "succeeded").count();
    assert_eq!(wins, 1, "exactly one attempt succeeded: {job}");
    assert_eq!(attempts.last().unwrap()["outcome"], "succeeded", "the success is the last attempt: {job}");
    for a in attempts {
        assert!(a["outcome"].is_string() && a["finished_at"].is_string(), "every attempt ended: {job}");
        assert!(a["worker"].as_str().is_some_and(|w| !w.is_empty()), "every attempt names its worker: {job}");
    }
    let numbers: HashSet<u64> = attempts.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers.len(), attempts.len(), "attempt numbers are distinct: {job}");
}

// The scenarios, apart from the processes, proxy and polling they share above.
#[path = "cluster/scenarios.rs"]
mod scenarios;
