//! The `exec` kind through the API: untrusted code runs in the sandbox, each abuse ends
//! with the right error type and `limit_hit`, the host stays healthy and nothing is left
//! behind (no process, no scratch directory). SQLite only: the sandbox does not depend on
//! the store (the result cache's store query is in the conformance suite, on both).

use crate::harness::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A server whose sandboxes make their scratch directories in a directory of their own
/// (directly under /tmp, so the sandbox's unprivileged uid can reach it).
struct ExecServer {
    srv: TestServer,
    scratch: PathBuf,
}

impl ExecServer {
    async fn start() -> ExecServer {
        ExecServer::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ferry::config::Config)) -> ExecServer {
        let scratch = std::env::temp_dir().join(format!("ferry-it-exec-{}", uuid::Uuid::now_v7().simple()));
        let dir = scratch.clone();
        let srv = TestServer::start_with(Backend::Sqlite, move |cfg| {
            cfg.exec.scratch_dir = Some(dir);
            cfg.exec.cache_ttl_ms = 0;
            tweak(cfg);
        })
        .await;
        ExecServer { srv, scratch }
    }

    /// Submits an `exec` job that is not retried; returns its id.
    async fn submit(&self, input: Value, extra: Value) -> String {
        let mut spec = json!({"kind": "exec", "input": input, "max_attempts": 1});
        for (k, v) in extra.as_object().expect("extra is an object") {
            spec[k] = v.clone();
        }
        self.srv.submit(spec).await
    }

    /// Submits and waits for the end.
    async fn run(&self, input: Value, extra: Value) -> Value {
        let id = self.submit(input, extra).await;
        self.srv.wait_state(&id, &["succeeded", "dead"]).await
    }

    /// The host is fine, and nothing of any sandbox is left: no scratch directory and no
    /// process whose command line holds `marker`.
    async fn assert_clean(&self, marker: &str) {
        let (status, _) = self.srv.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        // A cancelled attempt is torn down just after the job's state changed: allow the
        // sandbox (and the kernel, for the namespace) a moment.
        let started = Instant::now();
        loop {
            let left: Vec<_> = match std::fs::read_dir(&self.scratch) {
                Ok(dir) => dir.map(|e| e.expect("entry").path()).filter(|p| !p.ends_with("other-job")).collect(),
                Err(_) => Vec::new(),
            };
            let survivors = processes_with(marker);
            if left.is_empty() && survivors.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "left behind: scratch directories {left:?}, processes {survivors:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.srv.stop().await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Without a user namespace the process limit counts every process of the sandbox's uid
/// on the host, so the weak-mode test must not run beside the tests that fill it.
static HOST_WIDE_PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pids and command lines of live (non-zombie) processes whose command line has `marker`.
fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true);
        if cmdline.contains(marker) && !zombie {
            found.push((pid, cmdline));
        }
    }
    found
}

fn error_type(job: &Value) -> &str {
    job["error"]["type"].as_str().unwrap_or("none")
}

fn sh(code: &str, marker: &str) -> Value {
    json!({"language": "sh", "code": code, "args": [marker]})
}

fn python(code: &str, marker: &str) -> Value {
    json!({"language": "python", "code": code, "args": [marker]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_in_each_language() {
    let s = ExecServer::start().await;
    let cases = [
        ("python", "import sys; print('hello', sys.argv[1], input())"),
        ("bash", "read line; echo hello \"$1\" \"$line\""),
        ("sh", "read line; echo hello \"$1\" \"$line\""),
        ("node", "const l = require('fs').readFileSync(0, 'utf8').trim(); console.log('hello', process.argv[2], l)"),
    ];
    for (language, code) in cases {
        let input = json!({"language": language, "code": code, "args": ["m-hello"], "stdin": "there\n"});
        let job = s.run(input, json!({})).await;
        assert_eq!(job["state"], "succeeded", "{language}: {job:#}");
        let out = &job["output"];
        assert_eq!(out["stdout"], "hello m-hello there\n", "{language}: {out:#}");
        assert_eq!((out["exit_code"].as_i64(), out["limit_hit"].is_null()), (Some(0), true), "{out:#}");
        assert_eq!(out["cached"], false);
        assert_eq!(out["isolation"], "full");
        assert_eq!(out["code_hash"].as_str().map(str::len), Some(64), "{out:#}");
        assert!(out["cpu_ms"].is_u64() && out["max_rss_kb"].as_u64().unwrap_or(0) > 0, "{out:#}");
    }
    s.assert_clean("m-hello").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_env_and_a_failed_script_keep_their_output() {
    let s = ExecServer::start().await;
    let input = json!({
        "language": "python",
        "code": "import os, sys\nprint(open('data.txt').read().strip(), os.environ['MODE'], os.getcwd() == os.environ['HOME'])\nsys.stderr.write('boom\\n')\nsys.exit(3)",
        "files": {"data.txt": "payload\n"},
        "env": {"MODE": "fast"},
    });
    let job = s.run(input, json!({})).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(error_type(&job), "exit_status");
    assert_eq!(job["error"]["retryable"], false);
    assert_eq!(job["output"]["exit_code"], 3);
    assert_eq!(job["output"]["stdout"], "payload fast True\n");
    assert_eq!(job["output"]["stderr"], "boom\n", "the stderr of a failed script is readable");
    s.assert_clean("payload").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb() {
    let _alone = HOST_WIDE_PROCESSES.lock().await;
    let s = ExecServer::start().await;
    let input = json!({"language": "bash", "code": "b() { b | b & }; b; sleep 2", "args": ["m-bomb"], "limits": {"processes": 10}});
    let job = s.run(input, json!({"timeout_ms": 4000})).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    // The shell reports its failing forks; if it does not get to, the timeout ends it.
    let hit = job["output"]["limit_hit"].as_str().unwrap_or("none");
    assert!(matches!((error_type(&job), hit), ("resource_limit", "processes") | ("timeout", "timeout")), "{job:#}");
    s.assert_clean("m-bomb").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog() {
    let s = ExecServer::start().await;
    let input = json!({"language": "python", "code": "x = bytearray(1024 * 1024 * 1024)", "args": ["m-mem"], "limits": {"memory_mb": 128}});
    let job = s.run(input, json!({})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("memory")), "{job:#}");
    assert!(job["output"]["stderr"].as_str().unwrap_or("").contains("MemoryError"), "{job:#}");
    s.assert_clean("m-mem").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spin() {
    let s = ExecServer::start().await;
    let input =
        json!({"language": "python", "code": "while True: pass", "args": ["m-cpu"], "limits": {"cpu_seconds": 1}});
    let job = s.run(input, json!({"timeout_ms": 20_000})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("cpu")), "{job:#}");
    assert!(job["output"]["cpu_ms"].as_u64().unwrap_or(0) >= 900, "{job:#}");
    s.assert_clean("m-cpu").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_the_file_size_limit() {
    let s = ExecServer::start().await;
    let code = "open('big', 'wb').write(b'x' * 3 * 1024 * 1024)";
    let input = json!({"language": "python", "code": code, "args": ["m-fsize"], "limits": {"file_size_mb": 2}});
    let job = s.run(input, json!({})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("file_size")), "{job:#}");
    s.assert_clean("m-fsize").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_files_up_to_and_past_the_limit() {
    let s = ExecServer::start().await;
    // Opens until refused, then shows that exactly the limit was reachable (the listing's
    // own descriptor takes the slot just freed) and fails with the refusal. (Descriptors
    // the server itself inherited above the limit do not count: see SANDBOX.md.)
    let code = "import os\nfs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\nexcept OSError:\n    fs.pop().close()\n    print('open at the limit', len([f for f in os.listdir('/proc/self/fd') if int(f) < 32]))\n    raise";
    let input = json!({"language": "python", "code": code, "args": ["m-nofile"], "limits": {"open_files": 32}});
    let job = s.run(input, json!({})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("open_files")), "{job:#}");
    assert_eq!(job["output"]["stdout"], "open at the limit 32\n", "{job:#}");
    s.assert_clean("m-nofile").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_scratch_disk() {
    let s = ExecServer::start().await;
    // Files under the file-size limit, but more of them than the disk limit holds.
    let code = "for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 4 * 1024 * 1024)";
    let input =
        json!({"language": "python", "code": code, "args": ["m-disk"], "limits": {"disk_mb": 16, "file_size_mb": 8}});
    let job = s.run(input, json!({})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("disk")), "{job:#}");
    assert!(job["output"]["stderr"].as_str().unwrap_or("").contains("No space left"), "{job:#}");
    s.assert_clean("m-disk").await;
    s.stop().await;
}

/// Tries to write `path`; the script fails if it cannot (and says why on stderr).
async fn assert_cannot_write(s: &ExecServer, path: &Path, marker: &str) {
    let code = format!("open({:?}, 'w').write('owned')", path.display().to_string());
    let job = s.run(python(&code, marker), json!({})).await;
    assert_eq!(job["state"], "dead", "writing {} succeeded: {job:#}", path.display());
    assert_eq!(error_type(&job), "exit_status", "{job:#}");
    assert!(job["output"]["limit_hit"].is_null(), "{job:#}");
    assert!(job["output"]["stderr"].as_str().unwrap_or("").contains("Error"), "{job:#}");
    assert!(
        !path.exists() || std::fs::read_to_string(path).unwrap_or_default() != "owned",
        "{} was written",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_outside_the_scratch_dir() {
    let s = ExecServer::start().await;
    // Another job's scratch directory, as a sandbox would make it next to this one's.
    let other = s.scratch.join("other-job");
    std::fs::create_dir_all(&other).expect("other job's dir");
    let data_dir = s.srv.cfg().data_dir.clone();
    for path in [
        PathBuf::from("/usr/ferry-owned"),
        PathBuf::from("/etc/ferry-owned"),
        PathBuf::from("/ferry-owned"),
        other.join("owned.txt"),
        data_dir.join("owned.txt"),
    ] {
        assert_cannot_write(&s, &path, "m-write").await;
    }
    assert_eq!(std::fs::read_dir(&other).expect("other").count(), 0, "the other job's dir is untouched");
    std::fs::remove_dir_all(&other).expect("remove");
    s.assert_clean("m-write").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_database_or_the_server_environment() {
    let s = ExecServer::start().await;
    let data_dir = s.srv.cfg().data_dir.clone();
    let db = std::fs::read_dir(&data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .expect("the SQLite database file");
    let code = format!("print(len(open({:?}, 'rb').read()))", db.display().to_string());
    let job = s.run(python(&code, "m-read"), json!({})).await;
    assert_eq!((job["state"].as_str(), error_type(&job)), (Some("dead"), "exit_status"), "{job:#}");
    assert!(job["output"]["stdout"].as_str() == Some(""), "{job:#}");

    // The server's environment: neither inherited nor reachable through /proc.
    let pid = std::process::id();
    let code = format!(
        "import os\nprint(sorted(k for k in os.environ if k != 'LC_CTYPE'))\nprint(open('/proc/{pid}/environ').read())"
    );
    let job = s.run(python(&code, "m-read"), json!({})).await;
    assert_eq!((job["state"].as_str(), error_type(&job)), (Some("dead"), "exit_status"), "{job:#}");
    let stdout = job["output"]["stdout"].as_str().unwrap_or("");
    // (Python itself sets LC_CTYPE under the C locale.)
    assert_eq!(stdout, "['HOME', 'PATH', 'TMPDIR']\n", "only the sandbox's own variables: {job:#}");
    assert!(job["output"]["stderr"].as_str().unwrap_or("").contains("No such file"), "{job:#}");
    s.assert_clean("m-read").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tcp_connection_without_network() {
    let s = ExecServer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let code = format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')");
    let job = s.run(python(&code, "m-net"), json!({})).await;
    assert_eq!((job["state"].as_str(), error_type(&job)), (Some("dead"), "exit_status"), "{job:#}");
    assert!(job["output"]["limit_hit"].is_null());
    assert_eq!(job["output"]["stdout"], "");
    assert!(listener.accept().is_err(), "the listener saw no connection");
    s.assert_clean("m-net").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_flood() {
    let s = ExecServer::start().await;
    let job = s.run(sh("yes \"$1\"", "m-flood"), json!({})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("resource_limit", &json!("output")), "{job:#}");
    assert_eq!(job["output"]["truncated"], true);
    assert_eq!(job["output"]["stdout"].as_str().map(str::len), Some(1024 * 1024), "capped at 1 MiB");
    s.assert_clean("m-flood").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_past_the_hard_timeout() {
    let s = ExecServer::start().await;
    let job = s.run(sh("sleep 1000.3131", "m-sleep"), json!({"timeout_ms": 1500})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("timeout", &json!("timeout")), "{job:#}");
    assert_eq!(job["error"]["retryable"], true, "timeouts are retryable by default");
    s.assert_clean("1000.3131").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_grandchild_does_not_outlive_the_job() {
    let s = ExecServer::start().await;
    let code = "setsid sh -c 'sleep 1000.4242' > /dev/null 2>&1 &\n( ( sleep 1000.4243 & ) & )\necho started";
    let job = s.run(sh(code, "m-detach"), json!({})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["output"]["stdout"], "started\n");
    s.assert_clean("1000.424").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_ignores_sigterm_is_killed() {
    let s = ExecServer::start().await;
    let job =
        s.run(sh("trap '' TERM\nsleep 1000.5151", "m-term"), json!({"timeout_ms": 2000, "soft_timeout_ms": 500})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("timeout", &json!("timeout")), "{job:#}");
    assert_eq!(job["soft_timeout_ms"], 500);
    s.assert_clean("1000.5151").await;

    // One that handles it cleans up and says so before the hard timeout.
    let code = "trap 'echo cleaned up; exit 3' TERM\nsleep 1000.5252 &\nwait";
    let job = s.run(sh(code, "m-term"), json!({"timeout_ms": 10_000, "soft_timeout_ms": 500})).await;
    assert_eq!((error_type(&job), &job["output"]["limit_hit"]), ("timeout", &json!("timeout")), "{job:#}");
    assert_eq!((job["output"]["exit_code"].as_i64(), job["output"]["signal"].as_i64()), (Some(3), None), "{job:#}");
    assert_eq!(job["output"]["stdout"], "cleaned up\n", "{job:#}");
    s.assert_clean("1000.5252").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_jobs_good_and_hostile() {
    let _alone = HOST_WIDE_PROCESSES.lock().await;
    let s = ExecServer::start_with(|cfg| cfg.workers = 50).await;
    let health_url = format!("{}/healthz", s.srv.url());
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (client, stop) = (s.srv.client().clone(), stop.clone());
        tokio::spawn(async move {
            let mut checks = 0u32;
            while !stop.is_cancelled() {
                let resp = tokio::time::timeout(Duration::from_secs(5), client.get(&health_url).send()).await;
                let ok = matches!(resp, Ok(Ok(ref r)) if r.status() == StatusCode::OK);
                assert!(ok, "/healthz did not answer 200 within 5 s: {resp:?}");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            checks
        })
    };
    let mut expected = Vec::new();
    for i in 0..50 {
        let (input, extra, want) = match i % 5 {
            0 => (python(&format!("print({i} * 2)"), "m-fifty"), json!({}), ("succeeded", "none", None)),
            1 => (sh(&format!("echo {i}"), "m-fifty"), json!({}), ("succeeded", "none", None)),
            2 => (
                json!({"language": "bash", "code": "b() { b | b & }; b; sleep 2", "args": ["m-fifty"], "limits": {"processes": 10}}),
                json!({"timeout_ms": 4000}),
                ("dead", "either", None),
            ),
            3 => (
                json!({"language": "python", "code": "x = bytearray(1024 ** 3)", "args": ["m-fifty"], "limits": {"memory_mb": 128}}),
                json!({}),
                ("dead", "resource_limit", Some("memory")),
            ),
            _ => (sh("sleep 1000.6161", "m-fifty"), json!({"timeout_ms": 1500}), ("dead", "timeout", Some("timeout"))),
        };
        expected.push((i, s.submit(input, extra).await, want));
    }
    for (i, id, (state, error, hit)) in expected {
        let job = s.srv.wait_state(&id, &["succeeded", "dead"]).await;
        assert_eq!(job["state"], state, "job {i}: {job:#}");
        match (i % 5, error) {
            (0, _) => assert_eq!(job["output"]["stdout"], format!("{}\n", i * 2)),
            (1, _) => assert_eq!(job["output"]["stdout"], format!("{i}\n")),
            (_, "either") => assert!(matches!(error_type(&job), "resource_limit" | "timeout"), "job {i}: {job:#}"),
            _ => {
                assert_eq!(error_type(&job), error, "job {i}: {job:#}");
                assert_eq!(job["output"]["limit_hit"].as_str(), hit, "job {i}: {job:#}");
            }
        }
    }
    stop.cancel();
    let checks = watcher.await.expect("the health watcher panicked");
    assert!(checks > 0);
    s.assert_clean("m-fifty").await;
    s.assert_clean("1000.6161").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_cache_answers_identical_code() {
    let s = ExecServer::start_with(|cfg| cfg.exec.cache_ttl_ms = 3_600_000).await;
    let code = "import random; print(random.random())";
    let first = s.run(python(code, "m-cache"), json!({})).await;
    assert_eq!(first["output"]["cached"], false, "{first:#}");
    let again = s.run(python(code, "m-cache"), json!({})).await;
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["output"]["cached"], true, "{again:#}");
    assert_eq!(again["output"]["cached_from"], first["id"]);
    assert_eq!(again["output"]["stdout"], first["output"]["stdout"], "the same (random) result");
    assert_eq!(again["output"]["code_hash"], first["output"]["code_hash"]);

    // Another environment, a TTL of 0, or other code: run again.
    let mut with_env = python(code, "m-cache");
    with_env["env"] = json!({"X": "1"});
    let mut no_cache = python(code, "m-cache");
    no_cache["cache_ttl_ms"] = json!(0);
    for input in [with_env, no_cache, python("import random; print(random.random(), 2)", "m-cache")] {
        let job = s.run(input, json!({})).await;
        assert_eq!(job["output"]["cached"], false, "{job:#}");
        assert_ne!(job["output"]["stdout"], first["output"]["stdout"]);
    }
    // A failure is never reused.
    let failing = python("import sys; sys.exit(1)", "m-cache");
    let a = s.run(failing.clone(), json!({})).await;
    let b = s.run(failing, json!({})).await;
    assert_eq!((a["state"].as_str(), b["state"].as_str()), (Some("dead"), Some("dead")));
    assert_eq!(b["output"]["cached"], false);
    s.assert_clean("m-cache").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_exec_input_is_refused_with_the_field() {
    let s = ExecServer::start().await;
    let ceiling = s.srv.cfg().exec.ceilings.memory_mb;
    let cases = [
        (json!({"code": "x"}), "input"),
        (json!({"language": "cobol", "code": "x"}), "input.language"),
        (json!({"language": "python", "code": 5}), "input.code"),
        (json!({"language": "python", "code": "x", "args": "a"}), "input.args"),
        (json!({"language": "python", "code": "x", "files": {"../x": "a"}}), "input.files.../x"),
        (json!({"language": "python", "code": "x", "files": {"main.py": "a"}}), "input.files.main.py"),
        (json!({"language": "python", "code": "x", "env": {"1X": "a"}}), "input.env.1X"),
        (json!({"language": "python", "code": "x", "limits": {"memory_mb": ceiling + 1}}), "input.limits.memory_mb"),
        (json!({"language": "python", "code": "x", "limits": {"memory_mb": 0}}), "input.limits.memory_mb"),
        (json!({"language": "python", "code": "x", "limits": {"gpu": 1}}), "input.limits.gpu"),
        (json!({"language": "python", "code": "x", "shell": true}), "input.shell"),
    ];
    for (input, field) in cases {
        let (status, body) = s.srv.post("/v1/jobs", json!({"kind": "exec", "input": input})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{input}: {body}");
        assert_eq!(body["error"]["field"], field, "{input}: {body}");
    }
    let (status, body) = s
        .srv
        .post(
            "/v1/jobs",
            json!({"kind": "exec", "timeout_ms": 1000, "soft_timeout_ms": 1001, "input": python("print(1)", "m-bad")}),
        )
        .await;
    assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("soft_timeout_ms")), "{body}");
    assert_eq!(s.srv.count_jobs().await, 0, "nothing was stored");

    // At the ceiling is accepted; the kind's own default timeout applies.
    let input = json!({"language": "python", "code": "print(1)", "limits": {"memory_mb": ceiling}});
    let job = s.run(input, json!({})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["timeout_ms"], 120_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_the_sandbox_and_heavy_is_a_queue() {
    let s = ExecServer::start().await;
    let (status, body) = s.srv.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let exec = &body["details"]["exec"];
    assert_eq!(exec["missing"], json!([]), "{body:#}");
    assert_eq!(exec["accepting"], true);
    assert_eq!(exec["isolation"]["seccomp"], true, "{body:#}");

    let (_, queues) = s.srv.get("/v1/queues").await;
    assert!(queues["queues"].as_array().expect("queues").iter().any(|q| q["name"] == "heavy"), "{queues}");
    let job = s.run(sh("echo heavy", "m-heavy"), json!({"queue": "heavy"})).await;
    assert_eq!((job["queue"].as_str(), job["output"]["stdout"].as_str()), (Some("heavy"), Some("heavy\n")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_namespaces_exec_is_refused_unless_weak_mode_is_allowed() {
    let _alone = HOST_WIDE_PROCESSES.lock().await;
    let s = ExecServer::start_with(|cfg| cfg.exec.unshare = Some(PathBuf::from("/nonexistent/unshare"))).await;
    let (_, body) = s.srv.get("/readyz").await;
    let exec = &body["details"]["exec"];
    assert_eq!(exec["accepting"], false, "{body:#}");
    assert!(exec["missing"].as_array().is_some_and(|m| !m.is_empty()), "{body:#}");
    let (status, body) = s.srv.post("/v1/jobs", json!({"kind": "exec", "input": sh("echo hi", "m-weak")})).await;
    assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("kind")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("allow_weak_isolation"), "{body}");
    s.stop().await;

    let s = ExecServer::start_with(|cfg| {
        cfg.exec.unshare = Some(PathBuf::from("/nonexistent/unshare"));
        cfg.exec.allow_weak_isolation = true;
    })
    .await;
    let mut input = sh("echo weak", "m-weak");
    input["network"] = json!(true);
    let job = s.run(input, json!({})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!((job["output"]["stdout"].as_str(), job["output"]["isolation"].as_str()), (Some("weak\n"), Some("weak")));
    s.assert_clean("m-weak").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_script_kills_it() {
    let s = ExecServer::start().await;
    let id = s.submit(sh("echo started\nsleep 1000.7171", "m-cancel"), json!({})).await;
    s.srv.wait_state(&id, &["running"]).await;
    // Wait until the script itself runs, not just the attempt.
    let started = Instant::now();
    while processes_with("1000.7171").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the script never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = s.srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = s.srv.wait_state(&id, &["cancelled"]).await;
    assert_eq!(job["state"], "cancelled");
    s.assert_clean("1000.7171").await;
    s.stop().await;
}
