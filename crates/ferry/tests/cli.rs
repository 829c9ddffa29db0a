//! Pins what a newcomer meets in the CLI: the README's variables do not stop a server,
//! addresses are taken as people write them, refusals say what to do, and answers are
//! short by default (`--json` for the whole of them).
//!
//! These tests run the real `ferry` binary as a child process.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A `ferry server` child, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
    first_line: String,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferry server --listen LISTEN` on `data_dir` and reads the line it prints.
fn start_server(data_dir: &Path, listen: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["server", "--listen", listen, "--workers", "2"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first_line = String::new();
    stdout.read_line(&mut first_line).expect("read the listening line");
    let url = first_line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line: {first_line:?}"))
        .to_string();
    Server { child, url, first_line, _stdout: stdout }
}

/// Runs `ferry ARGS` with `env`; returns (exit code, stdout, stderr).
fn ferry(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args).env_remove("FERRY_TOKEN").env_remove("FERRY_SERVER").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a client command against `server`.
fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    ferry(args, &[("FERRY_SERVER", server)])
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn client_and_test_variables_do_not_stop_the_server_but_unknown_settings_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let readme_env = [
        ("FERRY_TOKEN", "ferry_0123"),
        ("FERRY_SERVER", "http://127.0.0.1:7899"),
        ("FERRY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    ];
    let (code, out, err) = ferry(&["config", "show", "--data-dir", data], &readme_env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["data_dir"], data);

    let (code, _, err) = ferry(&["config", "show"], &[("FERRY_NOSUCH", "1")]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown setting `nosuch`") && err.contains("FERRY_NOSUCH"), "{err}");

    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "[queues.webhook]\nconcurency = 50\n").unwrap();
    let (code, _, err) = ferry(&["config", "show", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("`queues.webhook.concurency` in ") && err.contains("ferry.toml"), "{err}");
    assert!(!err.contains("``") && !err.contains("default.") && !err.contains("exec_helper"), "{err}");
}

#[test]
fn listen_takes_a_host_name_and_server_takes_an_address_without_a_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "localhost:0");
    assert!(server.url.starts_with("http://127.0.0.1:"), "localhost is loopback: {}", server.first_line);
    assert!(server.first_line.contains("SQLite in"), "the store it uses: {}", server.first_line);
    let bare = server.url.trim_start_matches("http://");
    // Open mode holds on `localhost`: no token needed.
    let (code, out, err) = cli(bare, &["submit", "noop", "--input", r#"{"x": 1}"#, "--wait"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("succeeded"), "{out}");
    let by_name = bare.replace("127.0.0.1", "localhost");
    let (code, out, err) = cli(&by_name, &["status", out.split_whitespace().nth(1).unwrap()]);
    assert_eq!(code, 0, "--server {by_name}: {out} {err}");

    let (code, _, err) = ferry(&["server", "--listen", "localhost", "--data-dir", dir.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2, "a listen address without a port is refused by the parser: {err}");
    assert!(err.contains("HOST:PORT"), "{err}");
}

#[test]
fn a_port_in_use_is_reported_before_the_store_is_opened() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, out, err) = ferry(&["server", "--listen", &addr, "--data-dir", data.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!data.exists(), "the store was not opened (no migrations, no lock)");
}

#[test]
fn token_create_beside_a_running_server_and_a_401_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let create = ["token", "create", "--data-dir", data, "--workspace", "acme", "--user", "ops", "--role", "admin"];
    let (code, out, err) = ferry(&create, &[]);
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().to_string();
    assert!(out.contains("--token or FERRY_TOKEN"), "{out}");

    let server = start_server(dir.path(), "127.0.0.1:0");
    let (code, _, err) = ferry(&create, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains("stop it") && err.contains("POST") && err.contains("/v1/tokens"), "what to do: {err}");

    let (code, _, err) = cli(&server.url, &["token", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("401") && err.contains("--token") && err.contains("FERRY_TOKEN"), "{err}");
    let (code, _, err) = cli(&server.url, &["token", "list", "--token", "ferry_wrong"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown or revoked") && err.contains("--token"), "{err}");
    let (code, _, err) = cli(&server.url, &["token", "list", "--token", &token]);
    assert_eq!(code, 0, "{err}");
}

/// Serves one canned HTTP answer to every connection; returns its address.
fn fake_server(answer: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    addr
}

#[test]
fn an_answer_that_is_not_ferrys_is_shown() {
    let page = "<html><body><h1>404 Not Found</h1><hr>nginx</body></html>";
    let answer = Box::leak(
        format!("HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len())
            .into_boxed_str(),
    );
    let addr = fake_server(answer);
    let (code, _, err) = cli(&addr, &["status", "0199"]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nginx") && err.contains("Ferry"), "{err}");

    let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let (code, _, err) = cli(&fake_server(ok), &["dlq", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("200") && err.contains("hello") && err.contains("not JSON"), "{err}");
}

#[test]
fn answers_are_short_by_default_and_whole_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0");
    let url = server.url.clone();

    let (code, out, err) = cli(
        &url,
        &["submit", "fail", "--input", r#"{"type": "validation", "retryable": false, "message": "no"}"#, "--wait"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.lines().count() <= 4, "a few lines: {out}");
    assert!(out.contains("fail on queue default: dead") && out.contains("1 of 3"), "{out}");
    assert!(out.contains("validation: no"), "the last error: {out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();

    let (code, out, _) = cli(&url, &["status", &id, "--json"]);
    assert_eq!(code, 0);
    let job = json_of(&out);
    assert_eq!((job["id"].as_str(), job["attempts"].as_array().map(Vec::len)), (Some(id.as_str()), Some(1)));

    let (code, out, _) = cli(&url, &["dlq", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "one line per dead job: {out}");
    assert!(out.starts_with(&id) && out.contains("validation: no"), "{out}");
    let (code, out, _) = cli(&url, &["dlq", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["items"][0]["id"], id.as_str());

    let (code, out, _) = cli(&url, &["submit", "sleep", "--input", r#"{"ms": 1}"#, "--delay-ms", "60000"]);
    assert_eq!(code, 0);
    assert!(out.ends_with(": scheduled\n"), "{out}");
    let (code, out, _) = cli(&url, &["submit", "noop", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["created"], true);

    let (code, out, _) = ferry(&["submit", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("exec"), "the kinds, exec among them: {out}");
}

#[test]
fn runs_are_shown_and_cancelled_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let file = dir.path().join("nap.yaml");
    std::fs::write(&file, "name: nap\nnodes:\n  - id: sleep\n    kind: sleep\n    input: {ms: 60000}\n").unwrap();
    assert_eq!(cli(&url, &["workflow", "apply", file.to_str().unwrap()]).0, 0);

    let (code, out, err) = cli(&url, &["run", "nap", "--json"]);
    assert_eq!(code, 0, "{err}");
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let (code, out, _) = cli(&url, &["runs", "show", &id]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("run {id}  nap v1: ")), "{out}");
    assert!(out.lines().any(|l| l.trim_start().starts_with("sleep")), "a line per node: {out}");
    let (code, out, _) = cli(&url, &["runs", "list", "--workflow", "nap"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&id), "{out}");

    let (code, out, err) = cli(&url, &["runs", "cancel", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("run {id}: cancelled\n"));
    let (code, out, _) = cli(&url, &["runs", "show", &id, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["state"], "cancelled");
    let (code, _, err) = cli(&url, &["runs", "cancel", &id]);
    assert_eq!(code, 1, "a run that ended cannot be cancelled: {err}");
}

#[test]
fn queue_settings_return_to_the_configured_value_with_null_and_limits_set_says_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let (code, out, err) = cli(&url, &["queue", "set", "default", "--concurrency", "3", "--rate", "20"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["concurrency"], 3);
    let (code, out, err) = cli(&url, &["queue", "set", "default", "--concurrency", "null", "--rate", "null"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((json_of(&out)["concurrency"].clone(), json_of(&out)["rate"].clone()), (Value::Null, Value::Null));

    let (code, _, err) = cli(&url, &["limits", "set", r#"{"per_workspace": {"runs": 3, "jobs": null}}"#]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&url, &["limits", "set", r#"{"users": {}}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["per_workspace"], json!({"runs": 10, "jobs": null}), "replaced, not merged");
    assert!(err.contains("replaced") && err.contains("`per_workspace`"), "it says so: {err}");
    let (_, out, _) = ferry(&["limits", "set", "--help"], &[]);
    assert!(out.contains("Nothing is merged"), "{out}");
}

#[test]
fn the_stand_in_llm_answers_from_its_script_until_stopped_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.yaml");
    std::fs::write(&script, "default: {content: from the script}\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["stand-in", "llm", "--listen", "127.0.0.1:0", "--script"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry stand-in llm");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the first line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://")?.strip_suffix("/v1").map(str::to_string))
        .unwrap_or_else(|| panic!("no base URL in {line:?}"));

    let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
    let mut conn = std::net::TcpStream::connect(&addr).expect("the stand-in listens");
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let completion = json_of(answer.split("\r\n\r\n").nth(1).expect("a body"));
    assert_eq!(completion["choices"][0]["message"]["content"], "from the script", "{completion}");
    assert_eq!((&completion["object"], &completion["model"]), (&json!("chat.completion"), &json!("m")));

    // SIGTERM stops it cleanly.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the stand-in did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    std::fs::write(&script, r#"{"conversations": [{"match": "x", "turns": [{"contnet": "typo"}]}]}"#).unwrap();
    let (code, _, err) =
        ferry(&["stand-in", "llm", "--listen", "127.0.0.1:0", "--script", script.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conversations[0].turns[0]: unknown field `contnet`"), "{err}");
}

#[test]
fn schedules_are_created_listed_paused_and_deleted_by_name_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let (code, out, _) = cli(&url, &["schedule", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("no schedules"), "{out}");
    let args = ["schedule", "create", "nightly", "--cron", "0 3 * * *", "--timezone", "Europe/Paris", "--job"];
    let (code, out, err) = cli(&url, &[&args[..], &[r#"{"kind": "noop"}"#, "--catch-up", "none"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("nightly  ") && out.contains("cron `0 3 * * *` Europe/Paris  next "), "{out}");
    let (code, out, _) = cli(&url, &["schedule", "list", "--json"]);
    assert_eq!(code, 0);
    let listed = json_of(&out);
    assert_eq!(listed["schedules"][0]["spec"]["catch_up"], json!({"policy": "none"}), "{listed}");
    assert_eq!(listed["schedules"][0]["next_fire_times"].as_array().map(Vec::len), Some(5), "{listed}");
    let (code, out, err) = cli(&url, &["schedule", "pause", "nightly"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  paused  "), "{out}");
    let (code, out, err) = cli(&url, &["schedule", "resume", "nightly"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  next "), "{out}");
    let (code, out, err) = cli(&url, &["schedule", "delete", "nightly"]);
    assert_eq!((code, out.as_str()), (0, "deleted nightly\n"), "{err}");
    let (code, _, err) = cli(&url, &["schedule", "delete", "nightly"]);
    assert_eq!(code, 1);
    assert!(err.contains("no schedule named `nightly`"), "{err}");

    // A schedule of a workflow run, pinned to a version.
    let file = dir.path().join("nap.yaml");
    std::fs::write(&file, "name: nap\nnodes:\n  - id: sleep\n    kind: sleep\n    input: {ms: 1}\n").unwrap();
    assert_eq!(cli(&url, &["workflow", "apply", file.to_str().unwrap()]).0, 0);
    let pinned = ["schedule", "create", "naps", "--every-ms", "60000", "--workflow", "nap", "--workflow-version"];
    let (code, _, err) = cli(&url, &[&pinned[..], &["1", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&url, &["schedule", "list", "--json"]);
    assert_eq!(json_of(&out)["schedules"][0]["spec"]["run"], json!({"workflow": "nap", "version": 1}), "{out}");
    let (code, _, err) = cli(&url, &[&pinned[..], &["2"]].concat());
    assert_eq!(code, 1, "no version 2 of `nap`");
    assert!(err.contains("version"), "{err}");

    let (code, _, err) = cli(&url, &["schedule", "create", "bad", "--every-ms", "10", "--job", r#"{"kind": "noop"}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("every_ms"), "the field is named: {err}");
}
