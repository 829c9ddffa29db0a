//! A command runs in a fresh scratch directory with only the given environment, its exit and output are reported, and nothing is left behind.

mod common;

use common::{fixture, sh};
use ferry_sandbox::SandboxError;

#[tokio::test]
async fn exit_code_and_output_are_captured() {
    let f = fixture("basic");
    let out = f.sandbox.run(sh("echo hi; echo err >&2; exit 3 # marker-basic-1")).await.unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(out.signal, None);
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(out.stderr, "err\n");
    assert!(!out.truncated && !out.timed_out);
    assert_eq!(out.limit_hit, None);
    assert!(out.cpu_ms.is_some() && out.max_rss_kb.is_some_and(|kb| kb > 0), "{out:?}");
    assert!(out.pid_namespace, "this machine makes PID namespaces");
    f.assert_clean("marker-basic-1");
}

#[tokio::test]
async fn files_stdin_and_environment() {
    let f = fixture("files");
    let mut spec =
        sh("cat in.txt; cat -; echo \"[$FOO]\"; env | cut -d= -f1 | sort | tr '\\n' ' '; echo; pwd; echo \"$HOME\"");
    spec.files.insert("in.txt".into(), b"from file\n".to_vec());
    spec.stdin = b"from stdin\n".to_vec();
    spec.env.insert("FOO".into(), "bar".into());
    let out = f.sandbox.run(spec).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..3], ["from file", "from stdin", "[bar]"]);
    // Only what was given, plus PATH, HOME and TMPDIR (and PWD, which sh sets itself).
    assert_eq!(lines[3].trim(), "FOO HOME PATH PWD TMPDIR");
    assert_eq!((lines[4], lines[5]), ("/work", "/work"), "HOME is the scratch directory");
    f.assert_clean("cat in.txt");
}

#[tokio::test]
async fn bad_file_names_are_refused() {
    let f = fixture("badname");
    for name in ["../x", "a/b", "", ".."] {
        let mut spec = sh("true");
        spec.files.insert(name.into(), Vec::new());
        assert!(matches!(f.sandbox.run(spec).await, Err(SandboxError::InvalidSpec(_))), "{name:?}");
    }
    let _ = std::fs::remove_dir_all(&f.sandbox.base_dir);
}

#[tokio::test]
async fn a_missing_program_is_an_error_and_cleans_up() {
    let f = fixture("missing");
    let spec = ferry_sandbox::SandboxSpec::new("/nonexistent/program", Vec::<String>::new());
    assert!(matches!(f.sandbox.run(spec).await, Err(SandboxError::Spawn(_))));
    f.assert_clean("/nonexistent/program");
}
