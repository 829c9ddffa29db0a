#![doc = include_str!("../SANDBOX.md")]

mod helper;
mod isolation;
mod lockdown;
mod newroot;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

pub use helper::helper_main;
use helper::{HelperResult, HelperSpec};
pub use isolation::Isolation;

/// Per-process resource limits; `None` leaves the inherited limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Address space (`RLIMIT_AS`), in MiB.
    pub memory_mb: Option<u64>,
    /// CPU time (`RLIMIT_CPU`), in seconds: SIGXCPU at the limit.
    pub cpu_seconds: Option<u64>,
    /// Largest file the command may write (`RLIMIT_FSIZE`), in MiB.
    pub file_size_mb: Option<u64>,
    /// Processes of the sandbox, the helper included (`RLIMIT_NPROC`).
    pub processes: Option<u64>,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Size of the one tmpfs that holds `/work` and `/tmp`, in MiB: past it writes fail
    /// with ENOSPC ([`LimitHit::Disk`]). Needs a mount namespace; `None` leaves tmpfs's
    /// default (half of the RAM).
    #[serde(default)]
    pub disk_mb: Option<u64>,
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The program; a bare name is looked up in the sandbox's `PATH`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Bytes fed to the command's standard input, then closed.
    pub stdin: Vec<u8>,
    /// Files written into the scratch directory first; names must be plain file names.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The command's whole environment, with `PATH` (unless given) and `HOME`.
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    /// SIGTERM to the process group at this point.
    pub soft_timeout: Duration,
    /// SIGKILL to everything at this point.
    pub hard_timeout: Duration,
    /// Cap per stream; past it the output is truncated and the run killed.
    pub max_output_bytes: usize,
    /// Keep the host's network; otherwise a new network namespace without one.
    pub network: bool,
}

impl SandboxSpec {
    /// A spec with conservative defaults: no network, 5 s soft / 10 s hard, 1 MiB output.
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: Vec::new(),
            files: BTreeMap::new(),
            env: BTreeMap::new(),
            limits: Limits {
                memory_mb: Some(512),
                cpu_seconds: Some(10),
                file_size_mb: Some(64),
                processes: Some(64),
                open_files: Some(256),
                disk_mb: Some(100),
            },
            soft_timeout: Duration::from_secs(5),
            hard_timeout: Duration::from_secs(10),
            max_output_bytes: 1024 * 1024,
            network: false,
        }
    }
}

/// Which limit ended (or hurt) the run. Signals are certain; the rest is heuristic, see
/// [`Outcome::limit_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitHit {
    Memory,
    Cpu,
    FileSize,
    Processes,
    Output,
    Timeout,
    /// `/work` and `/tmp` are full (`Limits::disk_mb`).
    Disk,
    /// A process had as many files open as `Limits::open_files` allows (EMFILE).
    OpenFiles,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when one did.
    pub signal: Option<i32>,
    /// Captured output, lossily decoded, at most `max_output_bytes` each.
    pub stdout: String,
    pub stderr: String,
    /// A stream went past `max_output_bytes`.
    pub truncated: bool,
    pub duration_ms: u64,
    /// CPU time of the command and the descendants it waited for; `None` when the helper
    /// was killed before it could report (hard timeout, output flood).
    pub cpu_ms: Option<u64>,
    /// Largest resident set among them, in KiB; `None` as for `cpu_ms`.
    pub max_rss_kb: Option<u64>,
    /// Classification, in this order: output flood, hard timeout, soft timeout followed by
    /// an unsuccessful end (certain); SIGXCPU → cpu,
    /// SIGXFSZ → file size (certain); SIGKILL with `cpu_ms` at the CPU limit → cpu; then heuristics on the exit and stderr: exit code
    /// 128 + SIGXCPU/SIGXFSZ (a shell reporting its child) → cpu / file size; `File too
    /// large` → file size; `MemoryError`, `Cannot allocate memory`, `out of memory`,
    /// `bad_alloc`, `process OOM` (V8), or SIGKILL/SIGSEGV/SIGABRT with `max_rss_kb` at ≥ 80 % of the limit
    /// → memory; `Resource temporarily unavailable` → processes; `Too many open files` →
    /// open files. A shell's fork failure
    /// (`Cannot fork`, `fork: retry`) → processes even when the command exited 0.
    pub limit_hit: Option<LimitHit>,
    /// Killed at the hard timeout.
    pub timed_out: bool,
    /// Sent SIGTERM at the soft timeout. A command that then ends unsuccessfully (by the
    /// signal, or exiting non-zero after cleaning up) counts as timed out; one that
    /// exits 0 chose to succeed.
    pub soft_timed_out: bool,
    /// The command ran in its own PID namespace (everything it started was killed at the
    /// end); `false` means only its process group was.
    pub pid_namespace: bool,
    /// The isolation this run actually had (see [`Sandbox::probe`] for what the host can
    /// give).
    pub isolation: Isolation,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("network isolation requested but no network namespace can be made here")]
    NetworkIsolationUnavailable,
    #[error("the command could not be started: {0}")]
    Spawn(String),
    #[error("sandbox I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Where and how sandboxes run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Scratch directories are made under here.
    pub base_dir: PathBuf,
    /// The helper binary (see [`helper_main`]).
    pub helper: PathBuf,
    /// `(uid, gid)` the helper runs as; by default `nobody` when the parent is root.
    pub run_as: Option<(u32, u32)>,
    /// Arguments put before the spec path when the helper is started: a binary that
    /// re-executes itself as the helper sets `helper = current_exe()` and
    /// `helper_args = ["sandbox-helper"]`, and calls [`helper_main`] for that subcommand.
    pub helper_args: Vec<OsString>,
    /// Path of util-linux `unshare`.
    pub unshare: PathBuf,
    /// Host paths the command may read and execute, bound read-only at the same place in
    /// its root (symlinks such as `/bin -> usr/bin` are recreated as symlinks). Paths that
    /// do not exist are skipped. Default: `/usr /bin /sbin /lib /lib32 /lib64 /etc`.
    pub read_only_paths: Vec<PathBuf>,
    /// Host paths that must stay unreadable even under a read-only path (Ferry's data
    /// directory, database and config file): a directory is covered by an empty
    /// read-only tmpfs, a file by `/dev/null`. Needs a mount namespace.
    pub hidden_paths: Vec<PathBuf>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            base_dir: std::env::temp_dir().join("ferry-sandbox"),
            helper: default_helper_path(),
            run_as: rustix::process::geteuid().is_root().then_some((65534, 65534)),
            helper_args: Vec::new(),
            unshare: PathBuf::from("/usr/bin/unshare"),
            read_only_paths: ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"]
                .into_iter()
                .map(PathBuf::from)
                .filter(|p| p.symlink_metadata().is_ok())
                .collect(),
            hidden_paths: Vec::new(),
        }
    }
}

/// `FERRY_SANDBOX_HELPER`, else `ferry-sandbox-helper` next to the current executable or
/// one directory up (test binaries live in `target/<profile>/deps`).
fn default_helper_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_SANDBOX_HELPER") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join("ferry-sandbox-helper");
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent().filter(|_| d.ends_with("deps"));
    }
    PathBuf::from("ferry-sandbox-helper")
}

/// Runs `spec` with [`Sandbox::default`].
pub async fn run(spec: SandboxSpec) -> Result<Outcome, SandboxError> {
    Sandbox::default().run(spec).await
}

/// Removes the run directory whatever happened.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // The command may have left a directory without write or search permission.
            let _ = make_writable(&self.0);
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove sandbox directory");
            }
        }
    }
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let _ = make_writable(&entry.path());
        }
    }
    Ok(())
}

fn validate(spec: &SandboxSpec) -> Result<(), SandboxError> {
    let bad = |m: String| Err(SandboxError::InvalidSpec(m));
    if spec.program.as_os_str().is_empty() {
        return bad("program is empty".into());
    }
    for name in spec.files.keys() {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return bad(format!("file name {name:?} is not a plain file name"));
        }
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return bad(format!("environment variable name {key:?} is invalid"));
        }
    }
    if spec.hard_timeout < spec.soft_timeout {
        return bad("hard_timeout is shorter than soft_timeout".into());
    }
    Ok(())
}

/// SIGKILLs the process group when dropped: cleanup even if the `run` future is cancelled.
struct GroupKill(Option<Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

enum Event {
    Flood,
}

/// Reads a stream, keeping at most `cap` bytes; reports a flood once past it and keeps
/// draining (into nothing) so the writer is never blocked on a full pipe.
async fn capture(mut r: impl AsyncRead + Unpin, cap: usize, tx: mpsc::UnboundedSender<Event>) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                if n > room && !truncated {
                    truncated = true;
                    let _ = tx.send(Event::Flood);
                }
            }
        }
    }
    (kept, truncated)
}

impl Sandbox {
    /// Runs one command and waits for it; the scratch directory is gone when this returns.
    pub async fn run(&self, spec: SandboxSpec) -> Result<Outcome, SandboxError> {
        validate(&spec)?;
        self.validate()?;
        let probed = self.probe().await;
        let use_ns = probed.namespaces();
        // Without a network namespace only Landlock can keep the command off the network.
        let landlock_network = !spec.network && !use_ns;
        if landlock_network && !probed.landlock_network() {
            return Err(SandboxError::NetworkIsolationUnavailable);
        }
        let base_dir = std::path::absolute(&self.base_dir)?;
        std::fs::create_dir_all(&base_dir)?;
        let id = format!("run-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let run_dir = base_dir.join(id);
        std::fs::create_dir(&run_dir)?;
        let guard = RunDir(run_dir.clone());
        // The given files; in namespaces the helper copies them into /work, without them
        // this is the scratch directory itself (and `tmp` next to it is TMPDIR).
        let work_dir = run_dir.join("work");
        let tmp_dir = run_dir.join("tmp");
        std::fs::create_dir(&work_dir)?;
        std::fs::create_dir(&tmp_dir)?;
        for (name, content) in &spec.files {
            std::fs::write(work_dir.join(name), content)?;
        }
        let result_path = run_dir.join("result.json");
        let (home, tmp) = if use_ns {
            (PathBuf::from(newroot::WORK), PathBuf::from(newroot::TMP))
        } else {
            (work_dir.clone(), tmp_dir.clone())
        };
        let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if !spec.env.contains_key("PATH") {
            env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        }
        env.retain(|(k, _)| k != "HOME" && k != "TMPDIR");
        env.push(("HOME".into(), home.display().to_string()));
        env.push(("TMPDIR".into(), tmp.display().to_string()));
        let helper_spec = HelperSpec {
            program: spec.program.clone(),
            args: spec.args.clone(),
            env,
            run_dir: run_dir.clone(),
            files_dir: work_dir.clone(),
            cwd: home,
            limits: spec.limits.clone(),
            new_root: use_ns.then(|| newroot::NewRoot {
                read_only_paths: self.read_only_paths.clone(),
                hidden_paths: self.hidden_paths.clone(),
                disk_mb: spec.limits.disk_mb,
            }),
            read_only_paths: self.read_only_paths.clone(),
            writable_paths: vec![work_dir.clone(), tmp_dir.clone()],
            deny_network: !spec.network,
            require_landlock_network: landlock_network,
            require_landlock: probed.landlock_abi.is_some(),
        };
        let spec_path = run_dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&helper_spec).map_err(std::io::Error::other)?)?;
        if let Some((uid, gid)) = self.run_as {
            {
                use std::os::unix::fs::PermissionsExt as _;
                // The run directories must be reachable by the sandbox uid: add search
                // permission for others if missing, change nothing else (it may be /tmp).
                let mode = std::fs::metadata(&base_dir)?.permissions().mode();
                if mode & 0o001 == 0 {
                    std::fs::set_permissions(&base_dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011))?;
                }
            }
            for p in [&run_dir, &work_dir, &tmp_dir] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
            for name in spec.files.keys() {
                std::os::unix::fs::chown(work_dir.join(name), Some(uid), Some(gid))?;
            }
        }

        let mut cmd = if use_ns {
            let mut c = tokio::process::Command::new(&self.unshare);
            c.args(isolation::UNSHARE_FLAGS);
            if !spec.network {
                c.arg("--net");
            }
            c.arg("--").arg(&self.helper);
            c
        } else {
            tokio::process::Command::new(&self.helper)
        };
        cmd.args(&self.helper_args);
        cmd.arg(&spec_path)
            .env_clear()
            .current_dir(&work_dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| SandboxError::Spawn(e.to_string()))?;
        let pgid = child.id().and_then(|id| Pid::from_raw(id as i32));
        let group_guard = GroupKill(pgid);
        let kill_group = |sig: Signal| {
            if let Some(pgid) = pgid {
                let _ = kill_process_group(pgid, sig);
            }
        };

        let (tx, mut rx) = mpsc::unbounded_channel();
        let cap = spec.max_output_bytes;
        let out_task = tokio::spawn(capture(child.stdout.take().expect("piped"), cap, tx.clone()));
        let err_task = tokio::spawn(capture(child.stderr.take().expect("piped"), cap, tx));
        let mut stdin = child.stdin.take().expect("piped");
        let input = spec.stdin;
        let in_task = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            // Dropping `stdin` closes it.
        });

        let soft = tokio::time::sleep(spec.soft_timeout);
        let hard = tokio::time::sleep(spec.hard_timeout);
        tokio::pin!(soft, hard);
        let mut soft_sent = false;
        let mut timed_out = false;
        let mut flooded = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status?,
                () = &mut soft, if !soft_sent => {
                    soft_sent = true;
                    tracing::debug!("sandbox soft timeout: SIGTERM to the group");
                    kill_group(Signal::TERM);
                }
                () = &mut hard, if !timed_out => {
                    timed_out = true;
                    tracing::debug!("sandbox hard timeout: SIGKILL");
                    kill_group(Signal::KILL);
                    let _ = child.start_kill();
                }
                Some(Event::Flood) = rx.recv(), if !flooded => {
                    flooded = true;
                    tracing::debug!("sandbox output flood: SIGKILL");
                    kill_group(Signal::KILL);
                    let _ = child.start_kill();
                }
            }
        };
        let mut group_guard = group_guard;
        if use_ns {
            // The namespace is empty once `unshare` has returned; the group id may be
            // reused from here on, so it must not be signalled again.
            group_guard.0 = None;
        }
        // Without a namespace: whatever is left of the group, the only cleanup there is.
        drop(group_guard);
        in_task.abort();
        let duration_ms = started.elapsed().as_millis() as u64;
        // Without a PID namespace an escaped process may still hold the pipes open.
        let grace = Duration::from_millis(500);
        let (stdout, out_trunc) =
            tokio::time::timeout(grace, out_task).await.ok().and_then(Result::ok).unwrap_or_default();
        let (stderr, err_trunc) =
            tokio::time::timeout(grace, err_task).await.ok().and_then(Result::ok).unwrap_or_default();

        // Bounded, and never read through a symlink, whatever happened in the sandbox.
        let report: Option<HelperResult> = std::fs::symlink_metadata(&result_path)
            .ok()
            .filter(|m| m.is_file() && m.len() <= 64 * 1024)
            .and_then(|_| std::fs::read(&result_path).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        drop(guard);
        if report.as_ref().is_some_and(|r| r.network_unavailable) {
            return Err(SandboxError::NetworkIsolationUnavailable);
        }
        if let Some(err) = report.as_ref().and_then(|r| r.setup_error.clone()) {
            return Err(SandboxError::Spawn(format!("sandbox setup: {err}")));
        }
        if let Some(err) = report.as_ref().and_then(|r| r.limit_error.clone()) {
            return Err(SandboxError::Spawn(err));
        }
        if let Some(err) = report.as_ref().and_then(|r| r.spawn_error.clone()) {
            return Err(SandboxError::Spawn(err));
        }
        let (exit_code, signal) = match &report {
            Some(r) => (r.exit_code, r.signal),
            None => {
                use std::os::unix::process::ExitStatusExt as _;
                (status.code(), status.signal())
            }
        };
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let mut outcome = Outcome {
            exit_code,
            signal,
            stdout,
            stderr,
            truncated: out_trunc || err_trunc,
            duration_ms,
            cpu_ms: report.as_ref().map(|r| r.cpu_ms),
            max_rss_kb: report.as_ref().map(|r| r.max_rss_kb),
            limit_hit: None,
            timed_out,
            soft_timed_out: soft_sent,
            pid_namespace: use_ns,
            isolation: applied_isolation(&probed, report.as_ref(), use_ns, spec.network),
        };
        outcome.limit_hit = classify(&outcome, &spec.limits, flooded);
        Ok(outcome)
    }
}

/// What a run had: the namespaces it was started in, and what the helper reported
/// applying. Without a report (the helper was killed) the probe's values stand: the
/// helper refuses to start the command without the layers the probe found.
fn applied_isolation(probed: &Isolation, report: Option<&HelperResult>, use_ns: bool, network: bool) -> Isolation {
    let applied = report.map_or(*probed, |r| r.applied);
    Isolation {
        user_namespace: use_ns,
        pid_namespace: use_ns,
        mount_namespace: use_ns,
        network_namespace: use_ns && !network,
        ipc_namespace: use_ns,
        uts_namespace: use_ns,
        landlock_abi: applied.landlock_abi,
        seccomp: applied.seccomp,
        no_new_privs: applied.no_new_privs,
    }
}

impl Sandbox {
    fn validate(&self) -> Result<(), SandboxError> {
        for p in self.read_only_paths.iter().chain(&self.hidden_paths) {
            if !p.is_absolute() || p.parent().is_none() {
                return Err(SandboxError::InvalidSpec(format!(
                    "{} must be an absolute path other than /",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;
const SIGABRT: i32 = 6;
const SIGXCPU: i32 = 24;
const SIGXFSZ: i32 = 25;

/// See [`Outcome::limit_hit`] for the rules; everything after the signals is heuristic.
fn classify(o: &Outcome, limits: &Limits, flooded: bool) -> Option<LimitHit> {
    if flooded {
        return Some(LimitHit::Output);
    }
    if o.timed_out || (o.soft_timed_out && o.exit_code != Some(0)) {
        return Some(LimitHit::Timeout);
    }
    match o.signal {
        Some(SIGXCPU) => return Some(LimitHit::Cpu),
        Some(SIGXFSZ) => return Some(LimitHit::FileSize),
        _ => {}
    }
    if let (Some(SIGKILL), Some(secs), Some(cpu_ms)) = (o.signal, limits.cpu_seconds, o.cpu_ms)
        && cpu_ms + 100 >= secs * 1000
    {
        // The hard CPU limit (one second past the soft one) kills with SIGKILL.
        return Some(LimitHit::Cpu);
    }
    let err = &o.stderr;
    let fork_words = ["Cannot fork", "fork: retry", "fork: Resource temporarily unavailable", "can't fork"];
    if limits.processes.is_some() && fork_words.iter().any(|w| err.contains(w)) {
        return Some(LimitHit::Processes);
    }
    match o.exit_code {
        Some(0) => return None,
        // A shell reports a child killed by a signal as 128 + the signal.
        Some(c) if c == 128 + SIGXCPU => return Some(LimitHit::Cpu),
        Some(c) if c == 128 + SIGXFSZ => return Some(LimitHit::FileSize),
        _ => {}
    }
    if err.contains("File too large") {
        return Some(LimitHit::FileSize);
    }
    if err.contains("No space left on device") {
        return Some(LimitHit::Disk);
    }
    let memory_words =
        ["MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc", "memory allocation", "process OOM"];
    if memory_words.iter().any(|w| err.contains(w)) {
        return Some(LimitHit::Memory);
    }
    if let (Some(limit_mb), Some(rss), Some(SIGKILL | SIGSEGV | SIGABRT)) = (limits.memory_mb, o.max_rss_kb, o.signal)
        && rss * 10 >= limit_mb * 1024 * 8
    {
        return Some(LimitHit::Memory);
    }
    if limits.processes.is_some() && err.contains("Resource temporarily unavailable") {
        return Some(LimitHit::Processes);
    }
    if limits.open_files.is_some() && err.contains("Too many open files") {
        return Some(LimitHit::OpenFiles);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            exit_code: Some(1),
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            duration_ms: 1,
            cpu_ms: Some(0),
            max_rss_kb: Some(1000),
            limit_hit: None,
            timed_out: false,
            soft_timed_out: false,
            pid_namespace: true,
            isolation: Isolation::default(),
        }
    }

    #[test]
    fn classification() {
        let limits = SandboxSpec::new("sh", ["-c", "true"]).limits;
        let with = |f: &dyn Fn(&mut Outcome)| {
            let mut o = outcome();
            f(&mut o);
            classify(&o, &limits, false)
        };
        assert_eq!(with(&|_| {}), None);
        assert_eq!(classify(&outcome(), &limits, true), Some(LimitHit::Output));
        assert_eq!(with(&|o| o.timed_out = true), Some(LimitHit::Timeout));
        assert_eq!(with(&|o| o.soft_timed_out = true), Some(LimitHit::Timeout), "exit 1 after SIGTERM");
        assert_eq!(
            with(&|o| {
                o.soft_timed_out = true;
                o.exit_code = Some(0);
            }),
            None,
            "a clean exit after SIGTERM is a success"
        );
        assert_eq!(with(&|o| o.signal = Some(SIGXCPU)), Some(LimitHit::Cpu));
        assert_eq!(with(&|o| o.signal = Some(SIGXFSZ)), Some(LimitHit::FileSize));
        assert_eq!(with(&|o| o.exit_code = Some(153)), Some(LimitHit::FileSize));
        assert_eq!(with(&|o| o.stderr = "MemoryError\n".into()), Some(LimitHit::Memory));
        assert_eq!(
            with(&|o| o.stderr = "head: error writing 'big': No space left on device\n".into()),
            Some(LimitHit::Disk)
        );
        assert_eq!(
            with(&|o| {
                o.signal = Some(SIGKILL);
                o.cpu_ms = Some(10_000);
            }),
            Some(LimitHit::Cpu)
        );
        assert_eq!(
            with(&|o| {
                o.signal = Some(SIGSEGV);
                o.max_rss_kb = Some(500 * 1024);
            }),
            Some(LimitHit::Memory)
        );
        assert_eq!(
            with(&|o| {
                o.exit_code = Some(0);
                o.stderr = "sh: 1: Cannot fork\n".into();
            }),
            Some(LimitHit::Processes)
        );
        assert_eq!(
            with(&|o| {
                o.exit_code = Some(0);
                o.stderr = "MemoryError".into();
            }),
            None
        );
    }
}
