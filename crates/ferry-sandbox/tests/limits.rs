//! Each rlimit stops its abuse (CPU, file size, memory, processes, output) and the outcome names the limit hit.

mod common;

use std::time::Duration;

use common::{fixture, sh};
use ferry_sandbox::{LimitHit, SandboxSpec};

#[tokio::test]
async fn cpu_spin_hits_the_cpu_limit() {
    let f = fixture("cpu");
    let mut spec = sh("exec sh -c 'while :; do :; done # marker-cpu-1'");
    spec.limits.cpu_seconds = Some(1);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.limit_hit, Some(LimitHit::Cpu), "{out:?}");
    assert_eq!(out.signal, Some(24), "SIGXCPU");
    assert!(!out.timed_out);
    f.assert_clean("marker-cpu-1");
}

#[tokio::test]
async fn writing_past_the_file_size_limit_hits_file_size() {
    let f = fixture("fsize");
    let mut spec = sh("head -c 3000000 /dev/zero > big # marker-fsize-1");
    spec.limits.file_size_mb = Some(1);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.limit_hit, Some(LimitHit::FileSize), "{out:?}");
    assert_eq!(out.exit_code, Some(128 + 25), "sh reports head killed by SIGXFSZ");
    f.assert_clean("marker-fsize-1");
}

#[tokio::test]
async fn python_file_size_error_is_classified() {
    let f = fixture("fsize-py");
    // Python ignores SIGXFSZ, so the write fails with EFBIG instead.
    let mut spec = SandboxSpec::new("python3", ["-c", "open('big', 'wb').write(b'x' * 3_000_000) # marker-fsize-2"]);
    spec.limits.file_size_mb = Some(1);
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.limit_hit, Some(LimitHit::FileSize), "{out:?}");
    f.assert_clean("marker-fsize-2");
}

#[tokio::test]
async fn python_memory_hog_hits_the_memory_limit() {
    let f = fixture("memory");
    let mut spec = SandboxSpec::new("python3", ["-c", "x = bytearray(512 * 1024 * 1024) # marker-mem-1"]);
    spec.limits.memory_mb = Some(64);
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.timed_out);
    assert_eq!(out.limit_hit, Some(LimitHit::Memory), "{out:?}");
    assert!(out.max_rss_kb.unwrap() < 64 * 1024, "rss stayed under the limit: {out:?}");
    f.assert_clean("marker-mem-1");
}

#[tokio::test]
async fn fork_bomb_is_contained() {
    let f = fixture("forkbomb");
    let mut spec = sh("b() { b | b & }; b; sleep 0.5 # marker-bomb-1");
    spec.limits.processes = Some(10);
    spec.soft_timeout = Duration::from_secs(1);
    spec.hard_timeout = Duration::from_secs(2);
    let out = f.sandbox.run(spec).await.unwrap();
    // The bomb's first shell exits at once; its children die with the namespace.
    assert!(matches!(out.limit_hit, Some(LimitHit::Processes | LimitHit::Timeout)), "{out:?}");
    f.assert_clean("marker-bomb-1");
}

#[tokio::test]
async fn fork_bomb_that_waits_is_stopped_by_the_process_limit() {
    let f = fixture("forkbomb2");
    let mut spec = sh("b() { b | b; }; b # marker-bomb-2");
    spec.limits.processes = Some(10);
    spec.soft_timeout = Duration::from_secs(1);
    spec.hard_timeout = Duration::from_secs(2);
    let out = f.sandbox.run(spec).await.unwrap();
    assert!(matches!(out.limit_hit, Some(LimitHit::Processes | LimitHit::Timeout)), "{out:?}");
    f.assert_clean("marker-bomb-2");
}

#[tokio::test]
async fn stdout_flood_is_truncated_and_killed() {
    let f = fixture("flood");
    let mut spec = sh("yes marker-flood-1");
    spec.max_output_bytes = 1024 * 1024;
    let out = f.sandbox.run(spec).await.unwrap();
    assert!(out.truncated, "{:?}", out.limit_hit);
    assert_eq!(out.stdout.len(), 1024 * 1024);
    assert_eq!(out.limit_hit, Some(LimitHit::Output));
    assert!(!out.timed_out);
    f.assert_clean("marker-flood-1");
}
