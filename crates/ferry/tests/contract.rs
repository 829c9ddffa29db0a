//! Promise: `/v1/openapi.json` is exact. schemathesis, with every check it has, finds no
//! disagreement between the document and the live server: without a token (open mode on
//! loopback) and with an admin token.
//!
//! The test starts a Ferry server in this process (SQLite, no embedded workers, so no job
//! it submits ever runs: nothing leaves the machine) and runs
//! `schemathesis run <url>/v1/openapi.json` against it with every check, a fixed seed and a
//! bounded number of examples per operation. The settings are in
//! `tests/contract/schemathesis.toml`, every check included (`[checks] enabled = true`,
//! which `--checks all` on the command line would say too, but would also override the
//! per-operation settings there). It finds schemathesis at `.venv/bin/schemathesis` in the repository (what
//! `.ci/run` installs from `tests/contract/requirements.txt`) or at `FERRY_SCHEMATHESIS`.
//! Without it the test skips, saying so on stderr, unless `CI=true`: then it fails.
//!
//! Knobs: `FERRY_CONTRACT_SEED` (default 1) and `FERRY_CONTRACT_EXAMPLES` (examples per
//! operation, default 25). A failure prints schemathesis's report, its seed and the
//! command line that reproduces it against a server of your own.

use ferry::config::Config;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "support/outside.rs"]
mod outside;

/// How long one schemathesis run may take before the test kills it and fails.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The schemathesis executable, or `None` (after saying so) when it is not installed and
/// this is not CI.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("FERRY_SCHEMATHESIS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/schemathesis"));
    if path.is_file() {
        return Some(path);
    }
    let install = "python3 -m venv .venv && .venv/bin/pip install -r crates/ferry/tests/contract/requirements.txt";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true, so the contract test must run, but schemathesis is not at {}: run `bash .ci/run` \
             (it installs it), or `{install}` at the repository root, or set FERRY_SCHEMATHESIS",
            path.display()
        );
    }
    // Straight to the process's stderr: the test harness would capture `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** skipping the OpenAPI contract test: schemathesis is not at {} (install it with `{install}`, \
         or set FERRY_SCHEMATHESIS; CI=true makes this an error) ***\n",
        path.display()
    );
    None
}

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A server for schemathesis: SQLite in `dir`, loopback, no workers.
async fn start(dir: &Path) -> ferry::app::Server {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir: dir.to_path_buf(),
        workers: 0,
        ..Config::default()
    };
    cfg.validate().expect("the test configuration is valid");
    ferry::app::start(&cfg).await.expect("the server starts")
}

/// Gives the server something of each kind to show, so that the listings' answers are
/// checked against their schemas with real objects: a workflow and a run of it, a job
/// waiting for its time, a cancelled one, one with labels. Nothing runs (no workers).
async fn furnish(url: &str, token: Option<&str>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
    let post = async |path: &str, body: serde_json::Value| -> serde_json::Value {
        let mut req = client.post(format!("{url}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.expect("a JSON answer");
        assert!(status.is_success(), "POST {path} {body} answered {status} {answer}");
        answer
    };
    let workflow = serde_json::json!({
        "name": "contract",
        "nodes": [
            {"id": "a", "kind": "noop", "input": {"n": "{{ input.n }}"}},
            {"id": "b", "kind": "noop", "depends_on": ["a"], "input": "{{ nodes.a.output }}"},
        ],
    });
    post("/v1/workflows", workflow).await;
    post("/v1/runs", serde_json::json!({"workflow": "contract", "input": {"n": 1}})).await;
    post("/v1/jobs", serde_json::json!({"kind": "sleep", "input": {"ms": 1}, "delay_ms": 3_600_000})).await;
    post("/v1/jobs", serde_json::json!({"kind": "noop", "labels": {"team": "a"}, "priority": 5})).await;
    let cancelled = post("/v1/jobs", serde_json::json!({"kind": "noop", "input": [1, "two", null]})).await;
    let id = cancelled["id"].as_str().expect("an id");
    post(&format!("/v1/jobs/{id}/cancel"), serde_json::json!({})).await;
}

/// Runs schemathesis against the server at `url` with `extra` arguments; panics with its
/// report unless it exits 0.
async fn run(exe: PathBuf, url: &str, what: &str, extra: Vec<String>) {
    let seed = knob("FERRY_CONTRACT_SEED", 1);
    let examples = knob("FERRY_CONTRACT_EXAMPLES", 25);
    let config = repo_root().join("crates/ferry/tests/contract/schemathesis.toml");
    let mut args: Vec<String> = vec![
        "--no-color".into(),
        "--config-file".into(),
        config.display().to_string(),
        "run".into(),
        format!("{url}/v1/openapi.json"),
        "--seed".into(),
        seed.to_string(),
        "--max-examples".into(),
        examples.to_string(),
        "--workers".into(),
        "1".into(),
        "--generation-database".into(),
        "none".into(),
        // The test's token is throwaway: show every value, so a failure can be replayed.
        "--output-sanitize".into(),
        "false".into(),
    ];
    args.extend(extra);
    let shown = format!("{} {}", exe.display(), args.join(" "));
    let report = tokio::task::spawn_blocking(move || {
        // Its working directory is a scratch one: schemathesis may leave files behind.
        let scratch = tempfile::tempdir().expect("a scratch directory");
        let mut cmd = Command::new(&exe);
        cmd.args(&args).current_dir(scratch.path());
        outside::run(cmd, &exe.display().to_string(), RUN_DEADLINE)
    })
    .await
    .expect("the schemathesis runner does not panic");
    let (status, output, took) = report;
    let verdict = match status {
        Some(s) if s.success() => {
            let _ = writeln!(std::io::stderr(), "contract test ({what}): schemathesis passed in {took:.0?}");
            return;
        }
        Some(s) => format!("schemathesis exited with {s}"),
        None => format!("schemathesis did not finish within {RUN_DEADLINE:?} and was killed"),
    };
    panic!(
        "the OpenAPI document and the server disagree ({what}): {verdict} after {took:.0?}.\n\
         seed {seed}, {examples} examples per operation; to reproduce against a server of your own:\n  \
         {shown}\n\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_holds_in_open_mode() {
    let Some(exe) = schemathesis() else { return };
    let dir = tempfile::tempdir().expect("a data directory");
    let server = start(dir.path()).await;
    furnish(&server.url(), None).await;
    // Creating a token would end open mode for the rest of the run: the run with a token
    // covers `createToken`.
    let extra = vec!["--exclude-operation-id".into(), "createToken".into()];
    run(exe, &server.url(), "open mode, no token", extra).await;
    server.stop().await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_holds_with_an_admin_token() {
    let Some(exe) = schemathesis() else { return };
    let dir = tempfile::tempdir().expect("a data directory");
    let server = start(dir.path()).await;
    let secret = ferry_core::auth::new_token();
    server
        .store
        .create_token(ferry_store::NewToken {
            id: uuid::Uuid::now_v7(),
            workspace: "default".into(),
            user: "contract".into(),
            role: ferry_core::auth::Role::Admin,
            hash: ferry_core::auth::token_hash(&secret),
        })
        .await
        .expect("the token is stored");
    furnish(&server.url(), Some(&secret)).await;
    // Schemathesis reuses the ids it has seen: given `revokeToken`, it would revoke this
    // token (listed by `listTokens`) and spend the rest of the run on 401s. The open run
    // covers `revokeToken`.
    let extra = vec![
        "--header".into(),
        format!("Authorization: Bearer {secret}"),
        "--exclude-operation-id".into(),
        "revokeToken".into(),
    ];
    run(exe, &server.url(), "admin token", extra).await;
    server.stop().await.expect("the server stops");
}
