//! Without namespaces the sandbox still runs (process-group kills only), says so, and refuses to run without network isolation.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{fixture, sh};
use ferry_sandbox::{Sandbox, SandboxError};

fn without_namespaces(name: &str) -> common::Fixture {
    let mut f = fixture(name);
    f.sandbox = Sandbox { unshare: PathBuf::from("/nonexistent/unshare"), ..f.sandbox };
    f
}

#[tokio::test]
async fn runs_with_process_group_kills_and_says_so() {
    let f = without_namespaces("fallback");
    let mut spec = sh("echo hi; exit 4 # marker-fallback-1");
    spec.network = true;
    let out = f.sandbox.run(spec).await.unwrap();
    assert!(!out.pid_namespace);
    assert_eq!((out.exit_code, out.stdout.as_str()), (Some(4), "hi\n"), "{out:?}");
    f.assert_clean("marker-fallback-1");
}

#[tokio::test]
async fn hard_timeout_kills_the_group() {
    let f = without_namespaces("fallback-hard");
    let mut spec = sh("trap '' TERM; sleep 1000.201");
    spec.network = true;
    spec.soft_timeout = Duration::from_millis(200);
    spec.hard_timeout = Duration::from_millis(500);
    let out = f.sandbox.run(spec).await.unwrap();
    assert!(!out.pid_namespace);
    assert!(out.signal.is_some(), "{out:?}");
    f.assert_clean("1000.201");
}

#[tokio::test]
async fn network_isolation_is_required_unless_network_is_allowed() {
    let f = without_namespaces("fallback-net");
    let err = f.sandbox.run(sh("true")).await.unwrap_err();
    assert!(matches!(err, SandboxError::NetworkIsolationUnavailable), "{err:?}");
    let _ = std::fs::remove_dir_all(&f.sandbox.base_dir);
}
