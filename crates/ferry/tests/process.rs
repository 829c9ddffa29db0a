//! Pins the process-level promises: an acknowledged job survives `kill -9` of the server,
//! and SIGTERM drains (running attempts finish within the grace period, the rest are
//! handed back) and exits 0.
//!
//! These tests run the real `ferry` binary as a child process.

use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    url: String,
}

/// Starts `ferry server` on an ephemeral port and reads the address it prints.
fn spawn_server(data_dir: &Path, workers: usize, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["server", "--listen", "127.0.0.1:0", "--workers", &workers.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .env("FERRY_LOG", "warn")
        .env("FERRY_LEASE_MS", "3000")
        .env("FERRY_HEARTBEAT_MS", "500")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Proc { child, url }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn queue_counts(http: &reqwest::Client, url: &str) -> Value {
    let v: Value = http.get(format!("{url}/v1/queues")).send().await.unwrap().json().await.unwrap();
    v["queues"].as_array().unwrap().iter().find(|q| q["name"] == "default").cloned().unwrap()
}

fn open(q: &Value) -> u64 {
    ["depth", "running", "scheduled", "retrying"].iter().map(|k| q[*k].as_u64().unwrap()).sum()
}

async fn poll<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ids_in_state(http: &reqwest::Client, url: &str, state: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut u = format!("{url}/v1/jobs?state={state}&limit=1000");
        if let Some(c) = &cursor {
            u.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(u).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            ids.insert(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let mut server = spawn_server(dir.path(), 20, &[]);

    let mut acknowledged = HashSet::new();
    for _ in 0..4 {
        let jobs: Vec<Value> = (0..500).map(|_| json!({"kind": "sleep", "input": {"ms": 20}})).collect();
        let resp =
            http.post(format!("{}/v1/jobs/batch", server.url)).json(&json!({"jobs": jobs})).send().await.unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        for j in body["jobs"].as_array().unwrap() {
            acknowledged.insert(j["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(acknowledged.len(), 2000);

    // Kill while jobs run: some done, some running, most still queued.
    let url = server.url.clone();
    poll("some jobs to finish", async || {
        let q = queue_counts(&http, &url).await;
        q["running"].as_u64().unwrap() > 0 && open(&q) < 1800
    })
    .await;
    server.child.kill().expect("kill -9");
    server.child.wait().unwrap();

    let server = spawn_server(dir.path(), 20, &[]);
    let url = server.url.clone();
    poll("every job to finish after the restart", async || {
        let q = queue_counts(&http, &url).await;
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
    let succeeded = ids_in_state(&http, &server.url, "succeeded").await;
    let missing: Vec<_> = acknowledged.difference(&succeeded).collect();
    assert!(missing.is_empty(), "{} acknowledged jobs did not succeed, e.g. {:?}", missing.len(), missing.first());
    stop(server).await;
}

async fn stop(mut server: Proc) {
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "ferry exited with {status} after SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "ferry did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_attempts_finish_and_hands_back_long_ones() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let server = spawn_server(dir.path(), 2, &[("FERRY_SHUTDOWN_GRACE_MS", "1500")]);
    let submit = async |input: Value| -> String {
        let v: Value = http
            .post(format!("{}/v1/jobs", server.url))
            .json(&json!({"kind": "sleep", "input": input, "timeout_ms": 120000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let short = submit(json!({"ms": 300})).await;
    let long = submit(json!({"ms": 60000})).await;
    let waiting = submit(json!({"ms": 1})).await;
    let url = server.url.clone();
    poll("both slots to be running", async || queue_counts(&http, &url).await["running"] == 2).await;

    stop(server).await;

    // Read the outcome through a fresh server on the same data directory, with no workers
    // so nothing moves while we look.
    let server = spawn_server(dir.path(), 0, &[]);
    let job = async |id: &str| -> Value {
        http.get(format!("{}/v1/jobs/{id}", server.url)).send().await.unwrap().json().await.unwrap()
    };
    let s = job(&short).await;
    assert_eq!(s["state"], "succeeded", "the short attempt finished within the grace period: {s}");
    let l = job(&long).await;
    assert_eq!(l["state"], "queued", "the long attempt was handed back: {l}");
    assert_eq!(l["attempts"][0]["outcome"], "released");
    assert_eq!(l["attempts_used"], 0, "a released attempt does not count");
    let w = job(&waiting).await;
    assert_eq!(w["state"], "queued", "a job never claimed stays queued: {w}");
    assert_eq!(w["attempts"].as_array().unwrap().len(), 0);
    stop(server).await;
}

/// Runs the `ferry` CLI against a server; returns (exit code, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_SERVER", url)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_submits_waits_and_manages_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path(), 2, &[]);
    let url = server.url.clone();

    let (code, out, err) = cli(&url, &["submit", "noop", "--input", r#"{"x": 1}"#, "--wait", "--json"]);
    assert_eq!(code, 0, "stderr: {err}");
    let job: Value = serde_json::from_str(&out).expect("the result is JSON on stdout");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["output"], json!({"x": 1}));

    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"type": "validation", "retryable": false}"#).unwrap();
    let (code, out, _) =
        cli(&url, &["submit", "fail", "--input", &format!("@{}", input.display()), "--wait", "--json"]);
    assert_eq!(code, 1, "a dead job is a failed command");
    let dead: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["error"]["type"], "validation");
    let dead_id = dead["id"].as_str().unwrap();

    let (code, out, _) = cli(&url, &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(dead_id), "the dead job is in the DLQ listing: {out}");

    let (code, out, _) = cli(&url, &["dlq", "replay", dead_id, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], "queued");
    // Replayed, it fails for good again; then it can be deleted from the DLQ.
    let http = client();
    let dead_url = format!("{url}/v1/jobs/{dead_id}");
    poll("the replayed job to die again", async || {
        let j: Value = http.get(&dead_url).send().await.unwrap().json().await.unwrap();
        j["state"] == "dead"
    })
    .await;
    let (code, out, _) = cli(&url, &["dlq", "delete", dead_id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(http.get(&dead_url).send().await.unwrap().status(), 404);

    let (code, out, _) = cli(&url, &["status", job["id"].as_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["attempts"].as_array().unwrap().len(), 1);

    let (code, _, err) = cli(&url, &["cancel", job["id"].as_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_state"), "stderr names the refusal: {err}");

    let (code, _, err) = cli(&url, &["submit", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown_kind") && err.contains("kind"), "stderr: {err}");

    let (code, out, _) = cli(&url, &["submit", "sleep", "--input", r#"{"ms": 1}"#, "--delay-ms", "60000", "--json"]);
    assert_eq!(code, 0);
    let scheduled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(scheduled["state"], "scheduled");
    let (code, out, _) = cli(&url, &["cancel", scheduled["id"].as_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], "cancelled");

    let (code, out, _) = cli(&url, &["config", "show", "--workers", "3"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["workers"], 3);
    let (code, out, _) = cli(&url, &["config", "show", "--user-runs", "7", "--workspace-jobs", "100"]);
    assert_eq!(code, 0);
    let limits = &serde_json::from_str::<Value>(&out).unwrap()["default_limits"];
    assert_eq!(limits["per_user"], json!({"runs": 7, "jobs": null}), "a flag sets its limit only: {limits}");
    assert_eq!(limits["per_workspace"], json!({"runs": 10, "jobs": 100}), "{limits}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_applies_a_yaml_workflow_follows_runs_and_runs_exec_in_the_binary_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path(), 2, &[]);
    let url = server.url.clone();
    let file = dir.path().join("greet.yaml");
    std::fs::write(
        &file,
        "name: greet\nnodes:\n  - id: hello\n    kind: noop\n    input:\n      who: \"{{ input.who }}\"\n  \
         - id: shout\n    kind: noop\n    depends_on: [hello]\n    input: \"HELLO {{ nodes.hello.output.who }}\"\n",
    )
    .unwrap();
    let (code, out, err) = cli(&url, &["workflow", "apply", file.to_str().unwrap()]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"name": "greet", "version": 1}));
    let (code, out, err) = cli(&url, &["run", "greet", "--input", r#"{"who": "ferry"}"#, "--follow"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    assert!(out.contains("succeeded"), "{out}");
    let (code, out, _) = cli(&url, &["workflow", "list"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["workflows"][0]["latest_version"], 1);

    std::fs::write(&file, "name: doomed\nnodes:\n  - id: bad\n    kind: fail\n    input: {retryable: false}\n")
        .unwrap();
    assert_eq!(cli(&url, &["workflow", "apply", file.to_str().unwrap()]).0, 0);
    let (code, out, _) = cli(&url, &["run", "doomed", "--follow"]);
    assert_eq!(code, 1, "a failed run is a failed command: {out}");
    assert!(out.contains("failed"), "{out}");
    std::fs::write(&file, "name: [unclosed\n").unwrap();
    let (code, _, err) = cli(&url, &["workflow", "apply", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("YAML"), "{err}");

    // `exec` in the real binary: the server re-executes itself as the sandbox helper.
    let input = r#"{"language": "sh", "code": "echo sandboxed; hostname"}"#;
    let (code, out, err) = cli(&url, &["submit", "exec", "--input", input, "--wait", "--json"]);
    assert_eq!(code, 0, "stdout: {out} stderr: {err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["output"]["stdout"], "sandboxed\nferry-sandbox\n", "{job}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_is_made_before_the_server_and_then_required() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let (code, out, err) = cli(
        "http://unused",
        &["token", "create", "--data-dir", &data, "--workspace", "acme", "--user", "ops", "--role", "admin"],
    );
    assert_eq!(code, 0, "stderr: {err}");
    let token = out.lines().last().expect("the token on the last line").to_string();
    assert!(token.starts_with("ferry_"), "{out}");
    let (code, _, err) = cli(
        "http://unused",
        &["token", "create", "--data-dir", &data, "--workspace", "acme", "--user", "x", "--role", "root"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown role"), "{err}");

    let server = spawn_server(dir.path(), 1, &[]);
    let url = server.url.clone();
    let (code, _, err) = cli(&url, &["token", "list"]);
    assert_eq!(code, 1, "no token, no access");
    assert!(err.contains("unauthenticated"), "{err}");
    let (code, out, err) = cli(&url, &["token", "list", "--token", &token]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["tokens"][0]["user"], "ops");
    assert_eq!(list["tokens"][0]["workspace"], "acme");
    let (code, out, err) = cli(&url, &["submit", "noop", "--wait", "--token", &token]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = cli(&url, &["limits", "set", r#"{"per_user": {"runs": 2, "jobs": 3}}"#, "--token", &token]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["per_user"], json!({"runs": 2, "jobs": 3}));
    // A workspace admin changes only its workspace's share of a queue; a queue-wide
    // setting is the operator's.
    let (code, _, err) = cli(&url, &["queue", "set", "default", "--concurrency", "5", "--token", &token]);
    assert_eq!(code, 1, "a concurrency is the operator's");
    assert!(err.contains("403") && err.contains("concurrency"), "{err}");
    let (code, out, err) = cli(&url, &["queue", "set", "default", "--pause", "--rate", "5", "--token", &token]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"paused": true, "rate": 5.0, "queue_paused": false})
    );
    let (code, out, _) = cli(&url, &["queue", "list", "--token", &token]);
    assert_eq!(code, 0);
    assert!(out.contains("\"paused\": true"), "{out}");
    let (code, out, _) = cli(&url, &["limits", "get", "--token", &token]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["per_user"]["jobs"], 3);
    let (code, out, err) = cli(&url, &["limits", "set-rate", "api", "2.5", "--token", &token]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"label": "api", "rate": 2.5}));
    let (code, out, _) = cli(&url, &["limits", "rates", "--token", &token]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"rates": [{"label": "api", "rate": 2.5}]}));
    let (code, _, err) = cli(&url, &["limits", "set-rate", "api", "0", "--token", &token]);
    assert_ne!(code, 0);
    assert!(err.contains("rate"), "the error names the field: {err}");
    let (code, _, err) = cli(&url, &["limits", "unset-rate", "api", "--token", &token]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&url, &["limits", "unset-rate", "api", "--token", &token]);
    assert_ne!(code, 0, "nothing left to remove");
    assert!(err.contains("404"), "{err}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_durability_serves_and_survives_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    // No workers: the jobs stay queued, so what survives is exactly what was acknowledged.
    let mut server = spawn_server(dir.path(), 0, &[("FERRY_DURABILITY", "full")]);
    let jobs: Vec<Value> = (0..50).map(|i| json!({"kind": "noop", "input": {"i": i}})).collect();
    let resp = http.post(format!("{}/v1/jobs/batch", server.url)).json(&json!({"jobs": jobs})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = spawn_server(dir.path(), 4, &[("FERRY_DURABILITY", "full")]);
    let url = server.url.clone();
    poll("the jobs to run after the restart", async || open(&queue_counts(&http, &url).await) == 0).await;
    assert_eq!(ids_in_state(&http, &server.url, "succeeded").await.len(), 50);
    stop(server).await;
}

/// A tool target for the agent below: answers 200, counting its requests.
async fn counting_target() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { "order A-7: shipped" }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

/// An agent that looks an order up (an `http` tool to `target`), then answers: on the
/// stand-in, its second step's first call never ends, and the one after answers at once.
fn surviving_agent(llm: &ferry::stand_in::StandInLlm, target: &str) -> Value {
    json!({"name": "survivor", "agents": {"desk": {
        "model": "stand-in", "base_url": llm.base_url(), "instructions": "You survive crashes.",
        "tools": [{"name": "lookup", "kind": "http", "input": {"url": target}}]}},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "desk", "input": "where is A-7?"}]})
}

fn surviving_script() -> Value {
    json!({"conversations": [{"match": "survive crashes", "turns": [
        {"tool_calls": [{"name": "lookup", "arguments": {}}]},
        [{"content": "never sent", "delay_ms": 600000}, {"content": "A-7 has shipped."}],
    ]}]})
}

/// `kill -9` of the server while an agent's second step waits on the provider: after the
/// restart the step is asked again (its lease ran out with the process) and the run ends
/// as it would have, without the tool call that had succeeded being made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_resumes_after_kill_dash_nine_without_repeating_a_tool_call() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let (target, hits) = counting_target().await;
    let llm = ferry::stand_in::StandInLlm::start(surviving_script());
    let mut server = spawn_server(dir.path(), 4, &[]);
    let resp =
        http.post(format!("{}/v1/workflows", server.url)).json(&surviving_agent(&llm, &target)).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let resp =
        http.post(format!("{}/v1/runs", server.url)).json(&json!({"workflow": "survivor"})).send().await.unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    poll("the second step under way", async || llm.calls() == 2).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    server.child.kill().expect("kill -9");
    server.child.wait().unwrap();

    let server = spawn_server(dir.path(), 4, &[]);
    let url = format!("{}/v1/runs/{id}", server.url);
    let mut run = Value::Null;
    poll("the run's end after the restart", async || {
        run = http.get(&url).send().await.unwrap().json().await.unwrap();
        run["state"] != "running"
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let chat = &run["nodes"][0];
    assert_eq!(chat["output"]["answer"], "A-7 has shipped.");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "the tool call was not made again");
    assert_eq!(llm.calls(), 3, "the first step once, the second twice (once before the kill)");
    stop(server).await;
}
