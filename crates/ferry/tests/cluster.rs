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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_two_workers_survive_kill_dash_nine() {
    let Some(db) = database().await else { return };
    let http = client();
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let api1 = api_node(&db, &format!("{}-a1", db.schema), FAST_LEASES);
    let api2 = api_node(&db, &format!("{}-a2", db.schema), FAST_LEASES);
    let mut victim = worker(&db, &nodes[0], 20, FAST_LEASES);
    let survivor = worker(&db, &nodes[1], 20, FAST_LEASES);
    let apis = [api1.url.as_str(), api2.url.as_str()];

    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, apis[0]).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let workers = workers_by_node(&http, apis[0]).await;
    let victim_id = workers[&nodes[0]]["id"].as_str().unwrap().to_string();
    let survivor_id = workers[&nodes[1]]["id"].as_str().unwrap().to_string();

    // A job limit of exactly the 10,000 jobs: all of them fit only if no slot leaks.
    let limits = json!({"per_user": {"runs": 5, "jobs": 10_000}});
    let resp = http.put(format!("{}/v1/limits", apis[0])).json(&limits).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let spec = json!({"kind": "sleep", "input": {"ms": 5}, "max_attempts": 5});
    let acknowledged = submit(&http, &apis, spec, 10_000).await;
    assert_eq!(acknowledged.iter().collect::<HashSet<_>>().len(), 10_000, "ids are distinct");

    // Kill while work is in flight: some jobs done, some running, the victim holding some.
    poll("some jobs done and some running", async |last| {
        let q = queue_counts(&http, apis[0]).await;
        *last = q.to_string();
        assert!(open(&q) > 0, "every job finished before the kill: the test needs slower jobs ({q})");
        q["running"].as_u64().unwrap() > 0 && open(&q) < 9000
    })
    .await;
    // A worker claims and finishes in waves, so it may briefly hold nothing: kill it right
    // after the database shows it holding jobs.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let held: i64 =
            sqlx::query_scalar(db.sql("SELECT count(*) FROM {s}.jobs WHERE state = 'running' AND worker_id = $1"))
                .bind(&victim_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held a running job");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    victim.child.kill().expect("kill -9");
    victim.child.wait().unwrap();

    // Once the database has closed the victim's connections, nothing it sent can still
    // commit: the jobs it holds now are exactly the ones it lost.
    poll("the database to drop the victim's connections", async |last| {
        let n = db.backends(&nodes[0]).await;
        *last = format!("{n} connections");
        n == 0
    })
    .await;
    let orphans: Vec<uuid::Uuid> =
        sqlx::query_scalar(db.sql("SELECT id FROM {s}.jobs WHERE state = 'running' AND worker_id = $1"))
            .bind(&victim_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    if orphans.is_empty() {
        // Its last jobs finished between the check and the kill: nothing was lost.
        eprintln!("note: the killed worker held no running job when it died; no worker_lost to check");
    }

    wait_until_all_finished(&http, apis[0]).await;
    assert_all_succeeded(&http, apis[1], &acknowledged).await;

    let jobs = get_jobs(&http, &apis, &acknowledged).await;
    assert_eq!(jobs.len(), acknowledged.len());
    let mut lost_by = HashMap::<String, usize>::new();
    let mut succeeded_on = HashMap::<String, usize>::new();
    for job in &jobs {
        assert_one_success(job);
        for a in job["attempts"].as_array().unwrap() {
            let w = a["worker"].as_str().unwrap().to_string();
            assert!(w == victim_id || w == survivor_id, "attempt by an unknown worker: {job}");
            if a["outcome"] == "succeeded" {
                *succeeded_on.entry(w).or_default() += 1;
            } else {
                assert_eq!(a["outcome"], "failed", "{job}");
                assert_eq!(a["error"]["type"], "worker_lost", "the only failures are lost workers: {job}");
                *lost_by.entry(w).or_default() += 1;
            }
        }
    }
    let by_id: HashMap<&str, &Value> = jobs.iter().map(|j| (j["id"].as_str().unwrap(), j)).collect();
    for id in &orphans {
        let job = by_id[id.to_string().as_str()];
        let lost = job["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["worker"] == victim_id.as_str() && a["error"]["type"] == "worker_lost");
        assert!(lost, "a job the killed worker held has a worker_lost attempt from it: {job}");
    }
    eprintln!(
        "kill -9: {} jobs orphaned; lost attempts by worker {lost_by:?}; successes by worker {succeeded_on:?}",
        orphans.len()
    );
    assert!(lost_by.get(&victim_id).copied().unwrap_or(0) >= orphans.len());

    // Every slot came back, those of the killed worker's jobs too: 10,000 fit again.
    let again = submit(&http, &apis, json!({"kind": "noop"}), 10_000).await;
    assert_eq!(again.len(), 10_000);
    wait_until_all_finished(&http, apis[0]).await;

    // The victim no longer heartbeats: after one lease it is not listed any more.
    poll("the killed worker to drop out of /v1/workers", async |last| {
        let w = workers_by_node(&http, apis[0]).await;
        *last = format!("{:?}", w.keys());
        !w.contains_key(&nodes[0]) && w.contains_key(&nodes[1])
    })
    .await;

    stop(survivor).await;
    stop(api1).await;
    stop(api2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_the_database_cuts_their_connections() {
    let Some(db) = database().await else { return };
    let http = client();
    // One node name for both processes: one statement cuts all their connections.
    let node = db.schema.clone();
    let api = api_node(&db, &node, FAST_LEASES);
    let work = worker(&db, &node, 10, FAST_LEASES);

    let spec = json!({"kind": "sleep", "input": {"ms": 2}, "max_attempts": 5});
    let acknowledged = submit(&http, &[&api.url], spec, 2000).await;

    wait_for_running(&http, &api.url).await;
    let mut cut = 0;
    for _ in 0..3 {
        cut += db.terminate_backends(&node).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(cut > 0, "the processes' connections are named `ferry:{node}` and were cut");
    let q = queue_counts(&http, &api.url).await;
    eprintln!("cut {cut} connections; queue after the cuts: {q}");

    // Without any restart, everything acknowledged still runs to success.
    poll("every job to finish after the cuts", async |last| {
        let q = queue_counts(&http, &api.url).await;
        let stuck: Vec<(String, Option<String>)> = sqlx::query_as(db.sql(
            "SELECT id::text, worker_id FROM {s}.jobs WHERE state = 'running' \
             AND updated_at < {s}.ferry_now() - 10000000 LIMIT 5",
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default();
        *last = format!("{q}; running for over 10 s: {stuck:?}");
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;

    for p in [&api, &work] {
        let r = http.get(format!("{}/readyz", p.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{} is ready again: {}", p.url, r.text().await.unwrap_or_default());
    }
    let w = workers_by_node(&http, &api.url).await;
    assert!(w.contains_key(&node), "the worker still heartbeats: {w:?}");

    stop(work).await;
    stop(api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_only_node_and_worker_process_share_work() {
    let Some(db) = database().await else { return };
    let http = client();
    let api = api_node(&db, &format!("{}-api", db.schema), &[]);
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let w1 = worker(&db, &nodes[0], 5, &[]);
    let w2 = worker(&db, &nodes[1], 5, &[]);

    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, &api.url).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let workers = workers_by_node(&http, &api.url).await;
    assert_eq!(workers.len(), 2, "only the two worker processes are workers: {workers:?}");
    let mut ids = HashSet::new();
    for (node, p) in nodes.iter().zip([&w1, &w2]) {
        let w = &workers[node];
        assert_eq!(w["queues"], json!([{"name": "default", "concurrency": 5}]), "{w}");
        assert_eq!(w["concurrency"], 5, "{w}");
        let id = w["id"].as_str().unwrap();
        assert!(id.starts_with(&format!("{node}:{}:", p.child.id())), "worker id is node:pid:random: {id}");
        ids.insert(id.to_string());
    }

    let acknowledged = submit(&http, &[&api.url], json!({"kind": "noop", "input": {"x": 1}}), 200).await;
    wait_until_all_finished(&http, &api.url).await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;

    let jobs = get_jobs(&http, &[&api.url], &acknowledged).await;
    let mut by_worker = HashMap::<String, usize>::new();
    for job in &jobs {
        assert_one_success(job);
        assert_eq!(job["output"], json!({"x": 1}));
        for a in job["attempts"].as_array().unwrap() {
            *by_worker.entry(a["worker"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let seen: HashSet<String> = by_worker.keys().cloned().collect();
    assert_eq!(seen, ids, "both workers, and only they, ran attempts: {by_worker:?}");

    for p in [&api, &w1, &w2] {
        assert_eq!(http.get(format!("{}/readyz", p.url)).send().await.unwrap().status(), 200);
        assert_eq!(http.get(format!("{}/healthz", p.url)).send().await.unwrap().status(), 200);
    }
    stop(w1).await;
    stop(w2).await;
    stop(api).await;
}

/// A job whose result its worker could not record within a lease (the database was away)
/// must still finish: the worker gives up on it and leaves it to the reaper. The worker
/// must then let that job's lease run out. Here the reaper runs rarely, so that after the
/// outage the worker's heartbeat reaches the database before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_for_longer_than_its_lease_still_finishes_every_job() {
    let Some(db) = database().await else { return };
    let Some(proxy) = DbProxy::start(&db.url) else {
        eprintln!("skipping: cannot put a proxy in front of {}", ferry::config::redact_password(&db.url));
        return;
    };
    let http = client();
    let node = format!("{}-w", db.schema);
    let api = api_node(&db, &format!("{}-api", db.schema), FAST_LEASES);
    let env = [("FERRY_LEASE_MS", "3000"), ("FERRY_HEARTBEAT_MS", "500"), ("FERRY_REAP_MS", "10000")];
    let work = worker_via(&db, &proxy.url, &node, 20, &env);

    let spec = json!({"kind": "sleep", "input": {"ms": 300}, "max_attempts": 5});
    let acknowledged = submit(&http, &[&api.url], spec, 200).await;
    wait_for_running(&http, &api.url).await;

    // The worker loses the database for longer than a lease, while attempts finish. It
    // keeps running and says it is not ready.
    proxy.set_down(true);
    let outage = Instant::now();
    let worker_url = work.url.clone();
    poll_within(Duration::from_secs(5), "the cut-off worker to answer 503 on /readyz", async |last| {
        let r = http.get(format!("{worker_url}/readyz")).send().await.unwrap();
        *last = format!("{}", r.status());
        r.status() == 503
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(outage.elapsed())).await;
    proxy.set_down(false);

    // With a 3 s lease and a 10 s reaper, everything settles well within a minute; a job
    // still running after that is held by a lease nobody will let expire.
    poll_within(Duration::from_secs(90), "every job to finish after the outage", async |last| {
        let q = queue_counts(&http, &api.url).await;
        let stuck: Vec<(String, Option<String>, i64)> = sqlx::query_as(db.sql(
            "SELECT id::text, worker_id, ({s}.ferry_now() - updated_at) / 1000000 FROM {s}.jobs \
             WHERE state = 'running' AND updated_at < {s}.ferry_now() - 20000000 LIMIT 5",
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default();
        *last = format!("{q}; running for over 20 s (id, worker, seconds): {stuck:?}");
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;
    let r = http.get(format!("{}/readyz", work.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the worker is ready again");

    stop(work).await;
    stop(api).await;
}

/// Nodes started together on a fresh schema all start: one of them creates the schema and
/// applies the migrations, the others wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_fresh_schema_all_start() {
    let Some(db) = database().await else { return };
    let http = client();
    let launching: Vec<Launching> = (0..4)
        .map(|i| launch(&db, &db.url, &["server", "--workers", "0"], &format!("{}-n{i}", db.schema), &[]))
        .collect();
    let nodes: Vec<Proc> = launching.into_iter().map(Launching::ready).collect();
    for n in &nodes {
        assert_eq!(http.get(format!("{}/readyz", n.url)).send().await.unwrap().status(), 200);
    }
    for n in nodes {
        stop(n).await;
    }
}

/// A running job cancelled through an API node is stopped on the worker process at once,
/// by notification, not at the worker's next heartbeat: here heartbeats are a minute
/// apart, so a worker that waited for one would still be running the attempt when the
/// (generous, hang-only) deadline below runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_worker_process_at_once() {
    let Some(db) = database().await else { return };
    let http = client();
    let slow = [("FERRY_HEARTBEAT_MS", "60000"), ("FERRY_LEASE_MS", "180000")];
    let api = api_node(&db, &format!("{}-api", db.schema), &slow);
    let work = worker(&db, &format!("{}-w", db.schema), 2, &slow);
    let id = submit(&http, &[&api.url], json!({"kind": "sleep", "input": {"ms": 600_000}, "timeout_ms": 900_000}), 1)
        .await
        .remove(0);
    let running_on_worker = async || {
        let text = http.get(format!("{}/metrics", work.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ferry_worker_attempts_running "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    poll("the attempt to run on the worker process", async |last| {
        let n = running_on_worker().await;
        *last = format!("{n}");
        n == 1.0
    })
    .await;
    let resp = http.post(format!("{}/v1/jobs/{id}/cancel", api.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    poll_within(Duration::from_secs(30), "the worker to stop the cancelled attempt", async |last| {
        let n = running_on_worker().await;
        *last = format!("{n}");
        n == 0.0
    })
    .await;
    let job = get_json(&http, &format!("{}/v1/jobs/{id}", api.url)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["attempts"][0]["outcome"], "cancelled", "{job}");
    stop(work).await;
    stop(api).await;
}

/// A queue's rate is one token bucket in the database, shared by every worker process:
/// two workers together start no more than the rate, where a bucket of their own each
/// would start twice as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_holds_across_worker_processes() {
    let Some(db) = database().await else { return };
    let http = client();
    let api = api_node(&db, &format!("{}-api", db.schema), &[]);
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let w1 = worker(&db, &nodes[0], 20, &[]);
    let w2 = worker(&db, &nodes[1], 20, &[]);
    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, &api.url).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let resp =
        http.put(format!("{}/v1/queues/default", api.url)).json(&json!({"rate": 10})).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    // Worker processes re-read rates within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let acknowledged = submit(&http, &[&api.url], json!({"kind": "noop"}), 40).await;
    wait_until_all_finished(&http, &api.url).await;
    let jobs = get_jobs(&http, &[&api.url], &acknowledged).await;
    let mut starts = Vec::new();
    let mut workers = HashSet::new();
    for job in &jobs {
        assert_one_success(job);
        let attempt = &job["attempts"][0];
        workers.insert(attempt["worker"].as_str().unwrap().to_string());
        let at = chrono::DateTime::parse_from_rfc3339(attempt["started_at"].as_str().unwrap()).unwrap();
        starts.push(at.timestamp_micros());
    }
    starts.sort();
    assert_eq!(workers.len(), 2, "both workers took part: {workers:?}");
    // 10 per second with a burst of 10: at most 20 in any second (slack: 1); a bucket per
    // process would allow 40. And 40 starts take at least 3 s (slack: 0.5 s).
    let most = starts
        .iter()
        .enumerate()
        .map(|(i, t)| starts[i..].iter().take_while(|u| **u < t + 1_000_000).count())
        .max()
        .unwrap_or(0);
    assert!(most <= 21, "{most} starts within one second at a rate of 10/s over two workers");
    let span = (starts[starts.len() - 1] - starts[0]) as f64 / 1e6;
    assert!(span >= 2.5, "40 starts at 10/s took only {span} s");
    stop(w1).await;
    stop(w2).await;
    stop(api).await;
}
