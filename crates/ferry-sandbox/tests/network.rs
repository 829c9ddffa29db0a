//! Without `network: true` the command cannot connect anywhere, not even to the host's loopback.

mod common;

use std::time::Duration;

use common::fixture;
use ferry_sandbox::SandboxSpec;

fn connect(port: u16, network: bool) -> SandboxSpec {
    let code = format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('connected')");
    let mut spec = SandboxSpec::new("python3", ["-c", code.as_str()]);
    spec.network = network;
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    spec
}

#[tokio::test]
async fn loopback_is_unreachable_without_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = fixture("nonet");
    let out = f.sandbox.run(connect(port, false)).await.unwrap();
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("connected"));
    assert!(out.stderr.contains("Error"), "{out:?}");
    f.assert_clean(&format!("127.0.0.1', {port})"));
}

#[tokio::test]
async fn network_true_keeps_the_host_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let f = fixture("net");
    let out = f.sandbox.run(connect(port, true)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "connected\n");
    f.assert_clean(&format!("127.0.0.1', {port})"));
}
