//! In namespaces the command sees a root of its own: read-only system paths, hidden paths
//! covered, its own `/proc`, and `/work` + `/tmp` as the only writable places, on one
//! tmpfs of `disk_mb`.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use common::{fixture, sh};
use ferry_sandbox::LimitHit;

#[tokio::test]
async fn writes_outside_work_and_tmp_fail_and_other_jobs_are_untouched() {
    let f = fixture("fs-writes");
    // Another job's scratch directory, writable by anyone: only the sandbox stops the write.
    let sibling = f.sandbox.base_dir.join("run-other-job");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::set_permissions(&sibling, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = sibling.join("victim.txt");
    std::fs::write(&victim, "original").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "for p in /usr/ferry-x /etc/ferry-x /ferry-x /etc/passwd {v} {d}/new; do \
           (echo pwned >> $p) 2>/dev/null && echo \"wrote $p\"; done; \
         echo ok > /work/ok && echo work-ok; echo ok > /tmp/ok && echo tmp-ok; pwd # marker-fs-1",
        v = victim.display(),
        d = sibling.display()
    );
    let out = f.sandbox.run(sh(&script)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "work-ok\ntmp-ok\n/work\n", "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(!sibling.join("new").exists());
    assert!(out.isolation.full(), "{:?}", out.isolation.missing());
    std::fs::remove_dir_all(&sibling).unwrap();
    f.assert_clean("marker-fs-1");
}

#[tokio::test]
async fn hidden_paths_cannot_be_read_under_a_read_only_path() {
    let mut f = fixture("fs-hidden");
    // Not under /tmp, which the sandbox replaces with its own.
    let dir: PathBuf = format!("/var/tmp/ferry-sandbox-tests/hidden-{}", std::process::id()).into();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    std::fs::write(dir.join("visible.txt"), "VISIBLE\n").unwrap();
    std::fs::write(dir.join("secret/key.txt"), "TOPSECRET-DIR\n").unwrap();
    std::fs::write(dir.join("config.toml"), "TOPSECRET-FILE\n").unwrap();
    f.sandbox.read_only_paths.push(dir.clone());
    f.sandbox.hidden_paths = vec![dir.join("secret"), dir.join("config.toml"), "/nonexistent/data".into()];
    let script = format!(
        "cd {d}; cat visible.txt; cat secret/key.txt; cat config.toml; ls -A secret; echo x > secret/new; \
         echo end # marker-fs-2",
        d = dir.display()
    );
    let out = f.sandbox.run(sh(&script)).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.stdout, "VISIBLE\nend\n", "{out:?}");
    assert!(!out.stderr.contains("TOPSECRET"), "{out:?}");
    assert!(out.stderr.contains("secret/key.txt: No such file"), "{out:?}");
    f.assert_clean("marker-fs-2");
}

#[tokio::test]
async fn proc_shows_only_the_sandbox() {
    let f = fixture("fs-proc");
    let mut spec = sh("ls /proc | grep -c '^[0-9]'; test -e /proc/$HOST_PID && echo host-visible; \
                       tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/environ && echo environ-readable; \
                       for fd in /proc/1/fd/*; do readlink $fd && echo fds-readable; done; true # marker-fs-3");
    spec.env.insert("HOST_PID".into(), std::process::id().to_string());
    let out = f.sandbox.run(spec).await.unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let count: u32 = lines[0].parse().unwrap();
    // The helper, sh, ls and grep (and maybe a subshell).
    assert!((2..=6).contains(&count), "{out:?}");
    assert!(!out.stdout.contains("host-visible"), "{out:?}");
    assert!(lines[1].contains("ferry-sandbox-helper"), "PID 1 is the helper, not the host's init: {out:?}");
    assert!(!out.stdout.contains("environ-readable") && !out.stdout.contains("fds-readable"), "{out:?}");
    f.assert_clean("marker-fs-3");
}

#[tokio::test]
async fn filling_work_past_disk_mb_is_a_disk_limit() {
    let f = fixture("fs-disk");
    let mut spec = sh("head -c 20000000 /dev/zero > big # marker-fs-4");
    spec.limits.disk_mb = Some(8);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    assert_eq!(out.limit_hit, Some(LimitHit::Disk));
    f.assert_clean("marker-fs-4");
}

#[tokio::test]
async fn tmp_is_writable_and_shares_the_disk_limit_with_work() {
    let f = fixture("fs-tmp");
    let mut spec = sh("echo \"$TMPDIR\"; head -c 5000000 /dev/zero > /tmp/a && echo tmp-ok; \
                       head -c 5000000 /dev/zero > /work/b && echo work-ok; true # marker-fs-5");
    spec.limits.disk_mb = Some(8);
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.stdout, "/tmp\ntmp-ok\n", "{out:?}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    f.assert_clean("marker-fs-5");
}
