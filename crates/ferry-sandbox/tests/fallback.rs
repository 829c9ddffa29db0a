//! Without namespaces the sandbox still runs (process-group kills only) and says what is
//! missing; Landlock then confines writes to the scratch directory and keeps the command
//! off the network, and without Landlock's network rules a run without network is refused.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use common::{fixture, sh};
use ferry_sandbox::{Sandbox, SandboxError, SandboxSpec};

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
    assert!(!out.isolation.mount_namespace && out.isolation.seccomp && out.isolation.no_new_privs, "{out:?}");
    f.assert_clean("marker-fallback-1");
}

#[tokio::test]
async fn probe_reports_the_namespaces_missing() {
    let f = without_namespaces("fallback-probe");
    let iso = f.sandbox.probe().await;
    assert_eq!(
        iso.missing(),
        ["user_namespace", "pid_namespace", "mount_namespace", "network_namespace", "ipc_namespace", "uts_namespace"],
        "{iso:?}"
    );
    assert!(!iso.full());
    assert!(iso.landlock_abi.is_some_and(|v| v >= 1), "this machine has Landlock: {iso:?}");
    // With namespaces, the same machine gives everything.
    assert!(fixture("fallback-probe-full").sandbox.probe().await.full());
    // No probe is left running (it makes no scratch directory).
    std::fs::create_dir_all(&f.sandbox.base_dir).unwrap();
    f.assert_clean("--probe");
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
async fn landlock_confines_writes_to_the_scratch_directory() {
    let f = without_namespaces("fallback-landlock");
    // Another job's scratch directory, writable by anyone: only Landlock stops the write.
    let sibling = f.sandbox.base_dir.join("run-other-job");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::set_permissions(&sibling, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = sibling.join("victim.txt");
    std::fs::write(&victim, "original").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "for p in {v} {d}/new \"$HOME/../result.json\" /tmp/ferry-x /var/tmp/ferry-x; do \
           (echo pwned >> $p) 2>/dev/null && echo \"wrote $p\"; done; \
         cat {v} 2>/dev/null && echo read-sibling; \
         echo ok > \"$HOME/ok\" && echo home-ok; echo ok > \"$TMPDIR/ok\" && echo tmp-ok; true # marker-fallback-2",
        v = victim.display(),
        d = sibling.display()
    );
    let mut spec = sh(&script);
    spec.network = true;
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.stdout, "home-ok\ntmp-ok\n", "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(out.isolation.landlock_abi.is_some(), "{out:?}");
    std::fs::remove_dir_all(&sibling).unwrap();
    f.assert_clean("marker-fallback-2");
}

#[tokio::test]
async fn without_network_landlock_denies_tcp_or_the_run_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = without_namespaces("fallback-net");
    let code = format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('connected')");
    let mut spec = SandboxSpec::new("python3", ["-c", code.as_str()]);
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    let landlock_tcp = f.sandbox.probe().await.landlock_abi.is_some_and(|v| v >= 4);
    match f.sandbox.run(spec).await {
        Ok(out) => {
            assert!(landlock_tcp, "ran without any network isolation: {out:?}");
            assert_ne!(out.exit_code, Some(0), "{out:?}");
            assert!(out.stderr.contains("PermissionError"), "{out:?}");
            assert!(!out.stdout.contains("connected"));
        }
        Err(err) => {
            assert!(!landlock_tcp, "Landlock could have isolated the network: {err:?}");
            assert!(matches!(err, SandboxError::NetworkIsolationUnavailable), "{err:?}");
        }
    }
    f.assert_clean(&format!("127.0.0.1', {port})"));
}
