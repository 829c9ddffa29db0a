//! Pins that every shell example in README.md runs, offline, against the binary it
//! documents: the README cannot drift from the CLI and the API.
//!
//! Each ```` ```sh ```` block is run on its own with `bash -e`, in a fresh directory,
//! against a fresh `ferry server` started there as the README says (its data in
//! `./ferry-data`), on a free port, with `FERRY_SERVER` pointing at it and this build's
//! `ferry` first on `PATH`. Its exit status must be 0. Before it runs, the block is
//! rewritten in two ways only: `cargo run --release --` becomes `ferry` (the same binary),
//! and the default port `:7700` becomes the test server's port.
//!
//! A block is steered by an HTML comment on the line before its fence, which a reader of
//! the rendered README does not see:
//! - `<!-- not run: REASON -->`: not run (it starts a server, needs PostgreSQL, …);
//! - `<!-- run without a server -->`: run with no server (it opens the store itself);
//! - `<!-- server env: NAME=VALUE … -->`: the block's server starts with these variables,
//!   which the text around the block tells the reader to set.
//!
//! Every ```` ```yaml ```` or ```` ```toml ```` block whose first line is a comment naming
//! a file (`# enrich.yaml`) is written to that file in each block's directory first, so a
//! block may use the files the README shows.
//!
//! A failure names the block's line in README.md and shows its script and output; every
//! block runs, so one run reports every broken example.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one block may take (its jobs wait out retries and run `exec`).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// What the line before a block's fence says to do with it.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Run { server_env: Vec<(String, String)> },
    RunWithoutServer,
    Skip(String),
}

/// A fenced block of README.md.
#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    text: String,
    mode: Mode,
}

/// The mode an HTML comment line asks for; an error for a comment that is not a marker.
fn parse_marker(line: &str) -> Result<Mode, String> {
    let unknown = || format!("unknown marker `{}`", line.trim());
    let inner = line.trim().strip_prefix("<!--").and_then(|l| l.strip_suffix("-->")).ok_or_else(unknown)?.trim();
    if let Some(reason) = inner.strip_prefix("not run:") {
        return Ok(Mode::Skip(reason.trim().to_string()));
    }
    if inner == "run without a server" {
        return Ok(Mode::RunWithoutServer);
    }
    if let Some(vars) = inner.strip_prefix("server env:") {
        let server_env = vars
            .split_whitespace()
            .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("`{}`: expected NAME=VALUE pairs", line.trim()))?;
        return Ok(Mode::Run { server_env });
    }
    Err(unknown())
}

/// Every fenced block, with the marker on the line before it.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```").map(str::trim) else {
            i += 1;
            continue;
        };
        let start = i;
        let mut end = i + 1;
        while end < lines.len() && lines[end].trim() != "```" {
            end += 1;
        }
        // Only a shell block is steered; a comment before another block is the README's own.
        let before = start.checked_sub(1).map(|b| lines[b]).unwrap_or("");
        let mode = if lang == "sh" && before.trim_start().starts_with("<!--") {
            parse_marker(before).unwrap_or_else(|e| panic!("README.md line {start}: {e} before a ```sh block"))
        } else {
            Mode::Run { server_env: Vec::new() }
        };
        out.push(Block {
            line: start + 1,
            lang: lang.to_string(),
            text: lines[start + 1..end.min(lines.len())].join("\n"),
            mode,
        });
        i = end + 1;
    }
    out
}

/// The files the README shows: (name, content) of each block that opens with `# NAME`.
fn files(blocks: &[Block]) -> Vec<(String, String)> {
    blocks
        .iter()
        .filter(|b| b.lang == "yaml" || b.lang == "toml")
        .filter_map(|b| {
            let name = b.text.lines().next()?.strip_prefix("# ")?.trim();
            let plain = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
            plain.then(|| (name.to_string(), format!("{}\n", b.text)))
        })
        .collect()
}

/// A `ferry server` child, stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    port: u16,
    _stdout: BufReader<ChildStdout>,
}

fn ferry() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// `PATH` with this build's `ferry` first.
fn path_with_ferry() -> std::ffi::OsString {
    let dir = Path::new(ferry()).parent().expect("the binary's directory").to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest))).expect("PATH")
}

/// Starts `ferry server` in `cwd` on a free port; its log goes to `log`.
fn start_server(cwd: &Path, log: &Path, env: &[(String, String)]) -> Server {
    let mut cmd = Command::new(ferry());
    cmd.args(["server", "--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .env("FERRY_LOG", "warn")
        .env("FERRY_SHUTDOWN_GRACE_MS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("server log"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ferry server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the server's first line");
    let port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the server did not start: {line:?}\n{log}")
        });
    Server { child, port, _stdout: stdout }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The block as it runs: the binary by name, the test server's port.
fn rewrite(text: &str, port: Option<u16>) -> String {
    let text = text.replace("cargo run --release --", "ferry");
    match port {
        Some(p) => text.replace(":7700", &format!(":{p}")),
        None => text,
    }
}

/// Runs one block; `Err` holds a report of what went wrong.
fn run_block(block: &Block, files: &[(String, String)]) -> Result<(), String> {
    let root = tempfile::tempdir().expect("tempdir");
    let cwd = root.path().join("work");
    std::fs::create_dir(&cwd).expect("work dir");
    for (name, content) in files {
        std::fs::write(cwd.join(name), content).expect("write a README file");
    }
    let log = root.path().join("server.log");
    let server = match &block.mode {
        Mode::Run { server_env } => Some(start_server(&cwd, &log, server_env)),
        Mode::RunWithoutServer => None,
        Mode::Skip(_) => return Ok(()),
    };
    let script = rewrite(&block.text, server.as_ref().map(|s| s.port));
    let script_path: PathBuf = root.path().join("block.sh");
    std::fs::write(&script_path, &script).expect("write the script");
    let mut cmd = Command::new("bash");
    cmd.arg("-e")
        .arg(&script_path)
        .current_dir(&cwd)
        .env("PATH", path_with_ferry())
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = &server {
        cmd.env("FERRY_SERVER", format!("http://127.0.0.1:{}", s.port));
    }
    let mut child = cmd.spawn().expect("spawn bash");
    // Drain both pipes on threads, so a chatty block cannot fill one and stall.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    drop(server);
    match status {
        Some(s) if s.success() => Ok(()),
        other => {
            let what = match other {
                Some(s) => format!("exited with {s}"),
                None => format!("did not finish within {BLOCK_TIMEOUT:?}"),
            };
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            Err(format!(
                "README.md line {}: the ```sh block {what}\n--- script (as run) ---\n{script}\n--- stdout ---\n{stdout}\
                 \n--- stderr ---\n{stderr}\n--- server log ---\n{log}",
                block.line
            ))
        }
    }
}

#[test]
fn every_shell_example_in_the_readme_runs() {
    let jq = Command::new("jq").arg("--version").output();
    assert!(jq.is_ok_and(|o| o.status.success()), "the README's examples use `jq`: install it to run this test");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("read README.md");
    let blocks = blocks(&readme);
    let files = files(&blocks);
    let shell: Vec<&Block> = blocks.iter().filter(|b| b.lang == "sh").collect();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut ran = 0;
    for block in &shell {
        if let Mode::Skip(reason) = &block.mode {
            skipped.push(format!("line {} ({reason})", block.line));
            continue;
        }
        ran += 1;
        if let Err(report) = run_block(block, &files) {
            failures.push(report);
        }
    }
    let summary = format!("README.md: ran {ran} shell blocks, skipped {}: {}", skipped.len(), skipped.join(", "));
    println!("{summary}");
    assert!(failures.is_empty(), "{summary}\n{} of them failed:\n\n{}", failures.len(), failures.join("\n\n"));
    assert!(ran >= 5, "only {ran} shell blocks ran: is the README parsed right?");
}

#[test]
fn markers_and_files_are_read_from_the_line_before_a_block() {
    let readme = "text\n\n<!-- not run: starts a server -->\n```sh\nferry server\n```\n\
                  <!-- server env: FERRY_QUEUES__WEBHOOK__CONCURRENCY=50 A=b -->\n```sh\nferry queue list\n```\n\
                  ```yaml\n# enrich.yaml\nname: enrich\n```\n```sh\ncargo run --release -- status x; curl localhost:7700/healthz\n```\n";
    let b = blocks(readme);
    assert_eq!(b.len(), 4);
    assert_eq!((b[0].line, &b[0].mode), (4, &Mode::Skip("starts a server".into())));
    let env = vec![("FERRY_QUEUES__WEBHOOK__CONCURRENCY".to_string(), "50".to_string()), ("A".into(), "b".into())];
    assert_eq!(b[1].mode, Mode::Run { server_env: env });
    assert_eq!(files(&b), vec![("enrich.yaml".to_string(), "# enrich.yaml\nname: enrich\n".to_string())]);
    assert_eq!(rewrite(&b[3].text, Some(41234)), "ferry status x; curl localhost:41234/healthz");
    assert_eq!(parse_marker("<!-- run without a server -->"), Ok(Mode::RunWithoutServer));
    assert!(parse_marker("<!-- not-run: typo -->").is_err(), "a misspelt marker is an error, not a silent run");
    let other = blocks("<!-- a note -->\n```json\n{}\n```\n");
    assert_eq!(
        other[0].mode,
        Mode::Run { server_env: Vec::new() },
        "a comment before another block is the README's own"
    );
}
