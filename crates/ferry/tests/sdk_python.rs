//! Promise: the Python SDK (`clients/python`) works against this build of the server: its
//! client (jobs, waits, event streams with resume, runs) and its remote worker (retries,
//! the dead-letter queue, `kill -9` of a worker mid-job, SIGTERM drain, cancellation, a
//! workflow mixing a remote kind with `http`).
//!
//! The test runs the SDK's own pytest suite, `clients/python/tests`, with the repository's
//! `.venv/bin/python` (what `clients/python/setup.sh` installs into: `pip install -e
//! clients/python[test]`), and `FERRY_BIN` set to the `ferry` binary Cargo built for this
//! test: each Python test starts its own `ferry server` from it on a free loopback port
//! with a temporary data directory, and real `python -m ferry worker` processes.
//! Without `.venv` (or without the SDK's dependencies in it) the test skips, saying so on
//! stderr, unless `CI=true`: then it fails. A failure prints pytest's report.
//!
//! `FERRY_PYTEST_ARGS` adds arguments to pytest (`-k sigterm`, `-x`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/outside.rs"]
mod outside;

/// How long the whole suite may take before the test kills it and fails.
const DEADLINE: Duration = Duration::from_secs(900);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python with the SDK's test dependencies importable, or `None` (after saying
/// so) when they are missing and this is not CI.
fn python() -> Option<PathBuf> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    let install = "python3 -m venv .venv && bash clients/python/setup.sh";
    let missing = if !python.is_file() {
        Some(format!("{} does not exist", python.display()))
    } else {
        let probe = Command::new(&python)
            .args(["-c", "import httpx, pytest, ferry"])
            .env("PYTHONPATH", root.join("clients/python"))
            .stdin(Stdio::null())
            .output();
        match probe {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "{} cannot import the SDK's dependencies: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run {}: {e}", python.display())),
        }
    };
    let Some(why) = missing else { return Some(python) };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true, so the Python SDK's tests must run, but {why}: run `bash .ci/run`, or `{install}` at the repository root"
        );
    }
    // Straight to the process's stderr: the test harness would capture `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** skipping the Python SDK's tests: {why} (install with `{install}`; CI=true makes this an error) ***\n"
    );
    None
}

#[test]
fn the_python_sdk_suite_passes() {
    let Some(python) = python() else { return };
    let root = repo_root();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut args: Vec<String> = vec![
        "-m".into(),
        "pytest".into(),
        "clients/python/tests".into(),
        "-q".into(),
        "-p".into(),
        "no:cacheprovider".into(),
        "--basetemp".into(),
        scratch.path().join("t").display().to_string(),
    ];
    if let Ok(extra) = std::env::var("FERRY_PYTEST_ARGS") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    let shown = format!(
        "FERRY_BIN={} PYTHONPATH=clients/python {} {}",
        env!("CARGO_BIN_EXE_ferry"),
        python.display(),
        args.join(" ")
    );
    let mut cmd = Command::new(&python);
    cmd.args(&args)
        .current_dir(&root)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env("PYTHONPATH", root.join("clients/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, output, took) = outside::run(cmd, &python.display().to_string(), DEADLINE);
    match status {
        Some(s) if s.success() => {
            let summary = output.lines().rev().find(|l| l.contains(" passed")).unwrap_or("").trim();
            let _ = writeln!(std::io::stderr(), "Python SDK: pytest {summary} in {took:.0?}");
        }
        Some(s) => {
            panic!("the Python SDK's tests failed ({s}) after {took:.0?}; to run them again:\n  {shown}\n\n{output}")
        }
        None => panic!(
            "the Python SDK's tests did not finish within {DEADLINE:?} and were killed; to run them again:\n  {shown}\n\n{output}"
        ),
    }
}
