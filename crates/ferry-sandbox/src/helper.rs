//! The helper side: runs inside the sandbox (as PID 1 of the new namespaces when they
//! could be made), builds the sandbox's file system, locks itself down, runs the command,
//! and reports.
//!
//! It is a separate, single-threaded process, so everything here is ordinary safe code:
//! limits and restrictions set on the helper itself are inherited by the command it spawns.
//! The order matters: the result file is opened first (nothing after can reach the run
//! directory), the root is built while the helper still has its namespace capabilities,
//! and seccomp comes last because it forbids the mount calls that came before.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Resource, Rlimit, setrlimit};
use serde::{Deserialize, Serialize};

use crate::isolation::{PROBE_ARG, PROBE_NS_ARG, ProbeReport};
use crate::lockdown::FsPolicy;
use crate::newroot::NewRoot;
use crate::{Isolation, Limits, lockdown, newroot};

/// What the parent hands the helper (a JSON file in the run directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelperSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The host run directory: `result.json` is written here.
    pub run_dir: PathBuf,
    /// The host directory holding the given files (the scratch dir itself without a
    /// mount namespace).
    pub files_dir: PathBuf,
    /// The command's working directory, as it sees it.
    pub cwd: PathBuf,
    pub limits: Limits,
    /// Build a new root and pivot into it (a run in namespaces).
    pub new_root: Option<NewRoot>,
    /// Host paths for Landlock when there is no new root: read-only paths, scratch dirs.
    pub read_only_paths: Vec<PathBuf>,
    pub writable_paths: Vec<PathBuf>,
    /// Deny TCP with Landlock; refuse to run when that cannot be enforced and
    /// `require_landlock_network` is set (the fallback's only network isolation).
    pub deny_network: bool,
    pub require_landlock_network: bool,
    /// The probe found Landlock: refuse to run if it is not enforced after all.
    pub require_landlock: bool,
}

/// What the helper reports back (`result.json` in the run directory).
///
/// In namespaces the command can neither see the run directory nor reach the helper's
/// file descriptors (the helper is not dumpable), so this cannot be forged. Without them,
/// Landlock keeps the command out of the run directory; without Landlock too, a hostile
/// command sharing the helper's uid could overwrite it: it can then only lie about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HelperResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_ms: u64,
    pub max_rss_kb: u64,
    pub spawn_error: Option<String>,
    pub limit_error: Option<String>,
    /// Setting up isolation failed: the command was not started.
    pub setup_error: Option<String>,
    /// Network isolation was required but Landlock could not deny TCP.
    pub network_unavailable: bool,
    /// What was applied before the command started (namespaces are filled by the parent).
    pub applied: Isolation,
}

const MB: u64 = 1024 * 1024;

fn apply_limits(limits: &Limits) -> Result<(), String> {
    let set_range = |res: Resource, value: u64, max: u64, name: &str| {
        setrlimit(res, Rlimit { current: Some(value), maximum: Some(max) })
            .map_err(|e| format!("setrlimit {name}={value}: {e}"))
    };
    let set = |res: Resource, value: u64, name: &str| set_range(res, value, value, name);
    set(Resource::Core, 0, "core")?;
    if let Some(mb) = limits.memory_mb {
        set(Resource::As, mb.saturating_mul(MB), "as")?;
    }
    if let Some(secs) = limits.cpu_seconds {
        // SIGXCPU at the soft limit (catchable, so it can be told apart); SIGKILL a
        // second later at the hard one, for a command that ignores SIGXCPU.
        set_range(Resource::Cpu, secs.max(1), secs.max(1) + 1, "cpu")?;
    }
    if let Some(mb) = limits.file_size_mb {
        set(Resource::Fsize, mb.saturating_mul(MB), "fsize")?;
    }
    if let Some(n) = limits.processes {
        set(Resource::Nproc, n, "nproc")?;
    }
    if let Some(n) = limits.open_files {
        set(Resource::Nofile, n, "nofile")?;
    }
    Ok(())
}

/// The result file, opened through a directory fd on the run directory before the
/// helper loses sight of it (pivot_root, Landlock). Both fds are close-on-exec.
struct Report {
    file: std::fs::File,
    result: HelperResult,
}

impl Report {
    fn open(run_dir: &Path) -> Result<Self, String> {
        let dir: OwnedFd = rustix::fs::open(run_dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| format!("open {}: {e}", run_dir.display()))?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = rustix::fs::openat(&dir, "result.json", flags, Mode::from_raw_mode(0o600))
            .map_err(|e| format!("create result.json: {e}"))?;
        Ok(Self { file: file.into(), result: HelperResult::default() })
    }

    /// Writes the result and exits with `code`.
    fn finish(mut self, code: i32) -> ! {
        let bytes = serde_json::to_vec(&self.result).unwrap_or_default();
        if let Err(e) = self.file.write_all(&bytes) {
            eprintln!("ferry-sandbox-helper: cannot write result: {e}");
        }
        drop(self.file);
        // As PID 1 of the namespace, exiting makes the kernel kill whatever the command left.
        std::process::exit(code)
    }

    fn fail_setup(mut self, e: String) -> ! {
        self.result.setup_error = Some(e);
        self.finish(125)
    }
}

/// Entry point of the helper process: `helper [args...] <spec.json>`. Never returns.
///
/// Call this from a binary's `main` (the crate ships `ferry-sandbox-helper`); a binary
/// that re-executes itself as the helper (see [`crate::Sandbox::helper_args`]) calls it
/// for its helper subcommand: only the last argument is read.
pub fn helper_main() -> ! {
    let Some(last) = std::env::args_os().skip(1).last() else {
        eprintln!("usage: ferry-sandbox-helper <spec.json>");
        std::process::exit(125);
    };
    if last == PROBE_ARG || last == PROBE_NS_ARG {
        probe_main(last == PROBE_NS_ARG);
    }
    let spec: HelperSpec = match std::fs::read(&last)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-sandbox-helper: bad spec: {e}");
            std::process::exit(125);
        }
    };
    let mut report = match Report::open(&spec.run_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-sandbox-helper: {e}");
            std::process::exit(125);
        }
    };
    // Keeps the command (same uid) out of /proc/1/fd, /proc/1/mem and ptrace of the helper.
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        report.fail_setup(format!("set non-dumpable: {e}"));
    }
    let policy = match &spec.new_root {
        Some(root) => {
            if let Err(e) = rustix::system::sethostname(b"ferry-sandbox") {
                report.fail_setup(format!("sethostname: {e}"));
            }
            if let Err(e) = newroot::enter(&spec.run_dir, &spec.files_dir, root) {
                report.fail_setup(e);
            }
            FsPolicy {
                read_exec: root.read_only_paths.clone(),
                read: vec!["/proc".into()],
                list: vec!["/".into(), "/dev".into()],
                devices: ["null", "zero", "full", "random", "urandom"].map(|d| Path::new("/dev").join(d)).into(),
                full: vec![newroot::WORK.into(), newroot::TMP.into()],
            }
        }
        None => FsPolicy {
            read_exec: spec.read_only_paths.clone(),
            read: vec!["/proc".into()],
            list: vec!["/dev".into()],
            devices: ["null", "zero", "full", "random", "urandom"].map(|d| Path::new("/dev").join(d)).into(),
            full: spec.writable_paths.clone(),
        },
    };
    if let Err(e) = apply_limits(&spec.limits) {
        // Refuse to run the command without the limits it was promised.
        report.result.limit_error = Some(e);
        report.finish(125);
    }
    match lockdown::drop_capabilities() {
        Ok(true) => {}
        // In a user namespace the helper is root there and must be able to drop them all.
        Ok(false) if spec.new_root.is_some() => report.fail_setup("cannot empty the capability bounding set".into()),
        Ok(false) => {}
        Err(e) => report.fail_setup(e),
    }
    match lockdown::set_no_new_privs() {
        Ok(set) => report.result.applied.no_new_privs = set,
        Err(e) => report.fail_setup(e),
    }
    match lockdown::landlock(&policy, spec.deny_network) {
        Ok(applied) => {
            report.result.applied.landlock_abi = applied.abi;
            if spec.require_landlock && applied.abi.is_none() {
                report.fail_setup("Landlock was not enforced".into());
            }
            if spec.require_landlock_network && !applied.network_denied {
                report.result.network_unavailable = true;
                report.finish(125);
            }
        }
        Err(e) => report.fail_setup(e),
    }
    // Last: it forbids mount and friends, which the steps above needed.
    match lockdown::seccomp() {
        Ok(()) => report.result.applied.seccomp = true,
        Err(e) => report.fail_setup(e),
    }

    // Descriptors the engine itself inherited without close-on-exec (from a shell or a CI
    // runner) must not reach the command. The helper's own are close-on-exec already.
    close_fds::set_fds_cloexec(3, &[]);
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = match cmd.spawn() {
        Ok(mut child) => child.wait(),
        Err(e) => {
            report.result.spawn_error = Some(format!("cannot start {}: {e}", spec.program.display()));
            report.finish(127);
        }
    };
    let code = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            report.result.exit_code = status.code();
            report.result.signal = status.signal();
            status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        }
        Err(e) => {
            report.result.spawn_error = Some(format!("wait failed: {e}"));
            125
        }
    };
    // Resources of every waited-for descendant: the command, plus whatever it reaped.
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) {
        let ms = |tv: nix::sys::time::TimeVal| (tv.tv_sec() as u64) * 1000 + (tv.tv_usec() as u64) / 1000;
        report.result.cpu_ms = ms(usage.user_time()) + ms(usage.system_time());
        report.result.max_rss_kb = usage.max_rss().max(0) as u64;
    }
    report.finish(code);
}

/// `helper --probe`: tries each layer on itself, prints a [`ProbeReport`] and exits.
fn probe_main(in_namespaces: bool) -> ! {
    let mounts = in_namespaces && probe_mounts().is_ok();
    let no_new_privs = lockdown::set_no_new_privs().unwrap_or(false);
    let landlock_abi = lockdown::landlock_abi();
    let seccomp = lockdown::seccomp().is_ok();
    let report = ProbeReport { mounts, landlock_abi, seccomp, no_new_privs };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    std::process::exit(0)
}

/// In its own mount namespace: the mounts a run makes, over this namespace's `/tmp`.
fn probe_mounts() -> rustix::io::Result<()> {
    use crate::newroot::mount;
    use rustix::mount::MountFlags;
    mount("tmpfs", "/tmp", MountFlags::NOSUID | MountFlags::NODEV, "size=1m")?;
    std::fs::create_dir("/tmp/proc").map_err(|_| rustix::io::Errno::IO)?;
    mount("proc", "/tmp/proc", MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC, "")
}
