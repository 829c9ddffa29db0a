//! The interpreters the `exec` kind will offer (python3, bash, sh, node) start and run under the default limits.

mod common;

use common::fixture;
use ferry_sandbox::SandboxSpec;

async fn runs(name: &str, program: &str, args: &[&str], memory_mb: u64) {
    let f = fixture(name);
    let mut spec = SandboxSpec::new(program, args.iter().copied());
    spec.limits.memory_mb = Some(memory_mb);
    spec.stdin = b"21\n".to_vec();
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!((out.exit_code, out.stdout.as_str()), (Some(0), "42\n"), "{out:?}");
    f.assert_clean(args.last().unwrap());
}

#[tokio::test]
async fn python3() {
    runs("py", "python3", &["-c", "import sys; print(int(sys.stdin.read()) * 2) # py-marker"], 512).await;
}

#[tokio::test]
async fn bash() {
    runs("bash", "bash", &["-c", "read n; echo $((n * 2)) # bash-marker"], 512).await;
}

#[tokio::test]
async fn sh() {
    runs("sh", "sh", &["-c", "read n; echo $((n * 2)) # sh-marker"], 512).await;
}

/// V8 reserves about 800 MiB of address space at start: under `RLIMIT_AS` node needs
/// `memory_mb` ≥ 1024 (at 512 it dies with "Fatal process OOM", classified as memory).
#[tokio::test]
async fn node() {
    runs(
        "node",
        "node",
        &["-e", "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(2*s)) // node-marker"],
        1024,
    )
    .await;
}

#[tokio::test]
async fn node_under_a_small_address_space_is_a_memory_limit() {
    let f = fixture("node-small");
    let mut spec = SandboxSpec::new("node", ["-e", "console.log(1) // node-small-marker"]);
    spec.limits.memory_mb = Some(512);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.limit_hit, Some(ferry_sandbox::LimitHit::Memory), "{out:?}");
    f.assert_clean("node-small-marker");
}
