//! Inside, the command is uid 0 without any capability, with no_new_privs and the seccomp
//! deny-list: it cannot mount, make namespaces or ptrace; and it cannot forge its result.

mod common;

use std::time::Duration;

use common::{fixture, sh};
use ferry_sandbox::SandboxSpec;

#[tokio::test]
async fn no_capabilities_no_new_privs_seccomp_and_own_hostname() {
    let f = fixture("privs");
    let script = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'; \
                  id -u; hostname; unshare -r true && echo unshare-ok; unshare -n true && echo unshare-net-ok; \
                  mount -t tmpfs none /tmp && echo mount-ok; hostname evil 2>/dev/null && echo hostname-ok; \
                  true # marker-privs-1";
    let out = f.sandbox.run(sh(script)).await.unwrap();
    let expected = "CapInh:0000000000000000\nCapPrm:0000000000000000\nCapEff:0000000000000000\n\
                    CapBnd:0000000000000000\nCapAmb:0000000000000000\nNoNewPrivs:1\nSeccomp:2\n0\nferry-sandbox\n";
    assert_eq!(out.stdout, expected, "{out:?}");
    assert!(out.stderr.contains("unshare failed"), "{out:?}");
    let iso = out.isolation;
    assert!(iso.seccomp && iso.no_new_privs && iso.landlock_abi.is_some(), "{iso:?}");
    f.assert_clean("marker-privs-1");
}

/// ptrace and a `clone` with a namespace flag, straight through libc.
#[tokio::test]
async fn ptrace_and_namespace_clone_are_denied() {
    let f = fixture("privs-seccomp");
    let code = "import ctypes, os, platform\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                def show(name, r): print(name, r, os.strerror(ctypes.get_errno()) if r == -1 else '')\n\
                show('ptrace', libc.ptrace(0, 0, None, None))\n\
                nr = {'x86_64': 56, 'aarch64': 220}[platform.machine()]\n\
                show('clone', libc.syscall(nr, 0x10000000 | 17, None, None, None, None))\n\
                show('unshare', libc.unshare(0x20000))\n\
                # marker-privs-2";
    let mut spec = SandboxSpec::new("python3", ["-c", code]);
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(
        out.stdout,
        "ptrace -1 Operation not permitted\nclone -1 Operation not permitted\nunshare -1 Operation not permitted\n",
        "{out:?}"
    );
    f.assert_clean("marker-privs-2");
}

#[tokio::test]
async fn the_result_file_cannot_be_forged() {
    let f = fixture("forge");
    let forged = r#"{"exit_code":0,"signal":null,"cpu_ms":0,"max_rss_kb":0}"#;
    let script = format!(
        "ls /proc/1/root/ /proc/1/cwd/ 2>/dev/null && echo reached-helper; \
         for fd in /proc/1/fd/*; do readlink $fd && echo reached-helper; echo '{forged}' > $fd && echo reached-helper; done; \
         find / -xdev \\( -name result.json -o -name spec.json \\) 2>/dev/null | grep . && echo found; \
         for d in / /work /tmp /proc/1/cwd /proc/1/root /proc/self/fd/3 /proc/self/fd/4; do \
           echo '{forged}' > $d/result.json 2>/dev/null && echo \"wrote $d\"; done; \
         exit 7 # marker-forge-1"
    );
    let out = f.sandbox.run(sh(&script)).await.unwrap();
    assert_eq!(out.exit_code, Some(7), "{out:?}");
    assert!(!out.stdout.contains("reached-helper") && !out.stdout.contains("found"), "{out:?}");
    // Writing its own /work and /tmp is fine: the parent never reads those.
    assert_eq!(out.stdout, "wrote /work\nwrote /tmp\n", "{out:?}");
    f.assert_clean("marker-forge-1");
}

/// A descriptor the parent holds without close-on-exec (as one inherited from a shell
/// would be) does not reach the command: it has only its three standard streams.
#[tokio::test]
async fn stray_inherited_descriptors_do_not_reach_the_command() {
    let f = fixture("privs-fds");
    let file = std::fs::File::open("/dev/null").unwrap();
    // `dup` makes a descriptor without close-on-exec.
    let stray = rustix::io::dup(&file).unwrap();
    let out = f.sandbox.run(sh("ls /proc/self/fd | tr '\\n' ' ' # marker-privs-fds")).await.unwrap();
    // `ls` holds the directory it lists as descriptor 3.
    assert_eq!(out.stdout, "0 1 2 3 ", "{out:?}");
    drop(stray);
    f.assert_clean("marker-privs-fds");
}
