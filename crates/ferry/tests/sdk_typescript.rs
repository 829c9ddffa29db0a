//! Promise: the TypeScript SDK (`clients/typescript`) works against this build of Ferry.
//!
//! Runs `npm test` in `clients/typescript` (which compiles the SDK and its tests with `tsc`
//! and runs them with Node's own test runner) with `FERRY_BIN` set to this build's
//! `ferry` binary: the tests start real `ferry server` processes and worker processes of
//! their own, each on a free loopback port with a temporary data directory.
//!
//! It needs Node (20 or newer) and the SDK's one development dependency, `typescript`,
//! installed by `clients/typescript/setup.sh` (`npm ci`, what `.ci/run` runs). Without
//! them the test skips, saying so on stderr, unless `CI=true`: then it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/outside.rs"]
mod outside;

/// How long the whole `npm test` may take before the test kills it and fails.
const RUN_DEADLINE: Duration = Duration::from_secs(900);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript")
}

/// Whether the SDK's tests can run here; says why not (or panics under `CI=true`).
fn ready(dir: &Path) -> bool {
    let typescript = dir.join("node_modules/typescript/package.json");
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let npm = Command::new("npm").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let missing = if !node.is_ok_and(|s| s.success()) || !npm.is_ok_and(|s| s.success()) {
        "node and npm are not on PATH".to_string()
    } else if !typescript.is_file() {
        format!("{} is missing", typescript.display())
    } else {
        return true;
    };
    let install = "bash clients/typescript/setup.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, so the TypeScript SDK's tests must run, but {missing}: run `{install}` (`.ci/run` does)");
    }
    // Straight to the process's stderr: the test harness would capture `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** skipping the TypeScript SDK's tests: {missing} (install with `{install}`; CI=true makes this an error) ***\n"
    );
    false
}

#[test]
fn the_typescript_sdk_passes_its_tests() {
    let dir = sdk_dir();
    if !ready(&dir) {
        return;
    }
    let mut cmd = Command::new("npm");
    cmd.arg("test").current_dir(&dir).env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"));
    let (status, output, took) = outside::run(cmd, &format!("`npm test` in {}", dir.display()), RUN_DEADLINE);
    match status {
        Some(s) if s.success() => {
            // The runner's summary (`# tests N`, `# pass N`, …), for the record.
            let summary: Vec<&str> =
                output.lines().filter(|l| l.starts_with("# ") && !l.starts_with("# Subtest")).collect();
            let _ =
                writeln!(std::io::stderr(), "TypeScript SDK: npm test passed in {took:.0?}\n{}", summary.join("\n"));
        }
        Some(s) => panic!(
            "the TypeScript SDK's tests failed: `npm test` in {} exited with {s} after {took:.0?}\n\
             (FERRY_BIN={}; FERRY_TEST_ECHO=1 echoes the servers' and workers' output)\n\n{output}",
            dir.display(),
            env!("CARGO_BIN_EXE_ferry")
        ),
        None => {
            panic!("`npm test` in {} did not finish within {RUN_DEADLINE:?} and was killed\n\n{output}", dir.display())
        }
    }
}
