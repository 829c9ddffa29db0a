//! Pins what a submitter cannot make a server pay, measured on the real `ferry server`
//! process from `/proc`: idle event streams cost (almost) no CPU, and template references
//! cannot blow a run's node input up in memory past the input limit.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `ferry server` child process, killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferry server` (SQLite, in `data_dir`) on an ephemeral port and reads the
/// address it prints.
fn spawn_server(data_dir: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("FERRY_LOG", "warn")
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
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// A field of `/proc/PID/status`, in kB (`VmHWM`: the peak resident set).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB")
}

/// The CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).map(|f| f.parse().expect("ticks")).collect();
    let tck: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_secs_f64((fields[0] + fields[1]) as f64 / tck as f64)
}

/// The most CPU 500 idle streams may cost, as a share of one core.
const IDLE_CPU_SHARE: f64 = 0.05;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_streams_cost_almost_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    // Open mode: every stream is the one local caller's, so its cap is raised.
    let server = spawn_server(dir.path(), &[("FERRY_SSE_MAX_STREAMS_PER_TOKEN", "1000")]);
    let http = client();
    // A job due in an hour: its stream has nothing to say until then.
    let job: Value = http
        .post(format!("{}/v1/jobs", server.url))
        .json(&json!({"kind": "noop", "delay_ms": 3_600_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}/v1/jobs/{}/events", server.url, job["id"].as_str().expect("id"));
    let mut streams = Vec::new();
    for _ in 0..500 {
        let mut resp = http.get(&url).header("accept", "text/event-stream").send().await.expect("a stream");
        assert_eq!(resp.status(), 200);
        // Its first read is done: the log so far has arrived.
        let first = tokio::time::timeout(Duration::from_secs(30), resp.chunk()).await.expect("in time").unwrap();
        assert!(first.is_some_and(|c| String::from_utf8_lossy(&c).contains("scheduled")));
        streams.push(resp);
    }
    let pid = server.child.id();
    let (cpu0, wall0) = (cpu_time(pid), Instant::now());
    // A wall-clock window, not a latency: long enough for the CPU clock's resolution.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    assert!(share < IDLE_CPU_SHARE, "500 idle streams cost {:.1}% of a core ({cpu:?} over {wall:?})", share * 100.0);
    // And they are alive: a new event reaches one of them.
    let resp = http.post(format!("{}/v1/jobs/{}/cancel", server.url, job["id"].as_str().unwrap())).send().await;
    assert_eq!(resp.unwrap().status(), 200);
    let mut last = streams.pop().unwrap();
    let mut seen = String::new();
    while !seen.contains("cancelled") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), last.chunk()).await.expect("in time").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the event before the end")));
    }
}

/// The most the server's peak resident memory may reach while refusing the expansion.
const PEAK_MEMORY_KB: u64 = 200 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_references_cannot_blow_a_node_input_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_server(dir.path(), &[]);
    let http = client();
    // 800 references to a 512 KiB value: 400 MiB if expanded in full.
    let refs: Vec<&str> = (0..800).map(|_| "{{ input.big }}").collect();
    let def = json!({"name": "bomb", "nodes": [{"id": "boom", "kind": "noop", "input": {"copies": refs}}]});
    let resp = http.post(format!("{}/v1/workflows", server.url)).json(&def).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let big = "x".repeat(512 * 1024);
    let start = |workflow: &'static str| {
        let (http, url, big) = (&http, &server.url, &big);
        async move {
            http.post(format!("{url}/v1/runs"))
                .json(&json!({"workflow": workflow, "input": {"big": big}}))
                .send()
                .await
                .unwrap()
        }
    };
    // A first node starts with the run: the run is refused, and nothing is created.
    let resp = start("bomb").await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let field = body["error"]["field"].as_str().expect("a field");
    assert!(field.starts_with("nodes[0].input.copies["), "{body}");
    let runs: Value = http.get(format!("{}/v1/runs", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(runs["items"], json!([]), "the refused run was not created");
    // A node that starts later is resolved when it starts, as bounded: it fails.
    let later = json!({"name": "later", "nodes": [
        {"id": "first", "kind": "noop"},
        {"id": "boom", "kind": "noop", "depends_on": ["first"], "input": {"copies": refs}},
    ]});
    let resp = http.post(format!("{}/v1/workflows", server.url)).json(&later).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let resp = start("later").await;
    assert_eq!(resp.status(), 201, "the run starts; its second node fails");
    let run: Value = resp.json().await.unwrap();
    let id = run["id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(60);
    let detail = loop {
        let r: Value = http.get(format!("{}/v1/runs/{id}", server.url)).send().await.unwrap().json().await.unwrap();
        if r["state"] != "running" {
            break r;
        }
        assert!(Instant::now() < deadline, "the run did not end: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(detail["state"], "failed", "{detail}");
    let node = detail["nodes"].as_array().expect("nodes").iter().find(|n| n["id"] == "boom").expect("boom");
    assert_eq!(node["state"], "failed", "{node}");
    assert_eq!(node["error"]["type"], "validation", "{node}");
    let message = node["error"]["message"].as_str().expect("a message");
    assert!(message.contains("input.copies[") && message.contains("1048576 bytes"), "{message}");
    let peak = status_kb(server.child.id(), "VmHWM:");
    assert!(peak < PEAK_MEMORY_KB, "the server's peak memory reached {} MiB", peak / 1024);
}
