//! Timeouts end the whole process tree: SIGTERM at the soft one, SIGKILL at the hard one, detached processes included.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, processes_with, sh};
use ferry_sandbox::LimitHit;

fn short(script: &str) -> ferry_sandbox::SandboxSpec {
    let mut spec = sh(script);
    spec.soft_timeout = Duration::from_millis(300);
    spec.hard_timeout = Duration::from_millis(800);
    spec
}

#[tokio::test]
async fn soft_timeout_terminates_a_sleeper() {
    let f = fixture("soft");
    let out = f.sandbox.run(short("exec sleep 1000.101")).await.unwrap();
    assert_eq!(out.signal, Some(15), "SIGTERM: {out:?}");
    assert!(!out.timed_out);
    f.assert_clean("1000.101");
}

#[tokio::test]
async fn a_script_ignoring_sigterm_is_killed_at_the_hard_timeout() {
    let f = fixture("hard");
    let started = Instant::now();
    let out = f.sandbox.run(short("trap '' TERM; sleep 1000.102; echo not reached")).await.unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.limit_hit, Some(LimitHit::Timeout));
    assert!(started.elapsed() < Duration::from_secs(10));
    f.assert_clean("1000.102");
}

#[tokio::test]
async fn a_detached_grandchild_is_gone_after_the_run() {
    let f = fixture("detached");
    let script = "setsid sh -c 'sleep 1000.103' </dev/null >/dev/null 2>&1 & \
                  (sh -c 'sleep 1000.103 &' &) ; sleep 0.2; exit 0";
    let out = f.sandbox.run(short(script)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.timed_out);
    f.assert_clean("1000.103");
}

#[tokio::test]
async fn a_detached_grandchild_holding_stdout_is_gone_too() {
    let f = fixture("detached2");
    let out = f.sandbox.run(short("setsid sh -c 'sleep 1000.104' & echo started")).await.unwrap();
    assert_eq!(out.stdout, "started\n");
    assert!(processes_with("1000.104").is_empty());
    f.assert_clean("1000.104");
}

#[tokio::test]
async fn dropping_the_run_future_kills_the_sandbox() {
    let f = fixture("dropped");
    let run = f.sandbox.run(sh("setsid sh -c 'sleep 1000.105' & sleep 1000.105"));
    assert!(tokio::time::timeout(Duration::from_millis(300), run).await.is_err());
    // The kill is asynchronous (SIGKILL, then the kernel empties the namespace).
    for _ in 0..50 {
        if processes_with("1000.105").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.assert_clean("1000.105");
}
