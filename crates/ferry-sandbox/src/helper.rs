//! The helper side: runs inside the sandbox (as PID 1 of the new PID namespace when one
//! could be made), locks itself down with rlimits, runs the command, and reports.
//!
//! It is a separate, single-threaded process, so everything here is ordinary safe code:
//! limits set on the helper itself are inherited by the command it spawns.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};
use rustix::process::{Resource, Rlimit, setrlimit};
use serde::{Deserialize, Serialize};

use crate::Limits;

/// What the parent hands the helper (a JSON file in the run directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelperSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub work_dir: PathBuf,
    pub result_path: PathBuf,
    pub limits: Limits,
}

/// What the helper reports back (written atomically next to the spec).
///
/// The command runs under the same uid as the helper, so a hostile command could forge
/// this file: it can only lie about itself, and the parent never trusts it for anything
/// but reporting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HelperResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_ms: u64,
    pub max_rss_kb: u64,
    pub spawn_error: Option<String>,
    pub limit_error: Option<String>,
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

fn write_result(path: &Path, result: &HelperResult) {
    let tmp = path.with_extension("tmp");
    let ok = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec(result).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        eprintln!("ferry-sandbox-helper: cannot write result: {e}");
    }
}

/// Entry point of the helper process: `helper <spec.json>`. Never returns.
///
/// Call this from a binary's `main` (the crate ships `ferry-sandbox-helper`; the `ferry`
/// binary may later re-execute itself into it instead).
pub fn helper_main() -> ! {
    let Some(spec_path) = std::env::args_os().nth(1) else {
        eprintln!("usage: ferry-sandbox-helper <spec.json>");
        std::process::exit(125);
    };
    let spec: HelperSpec = match std::fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-sandbox-helper: bad spec: {e}");
            std::process::exit(125);
        }
    };
    let mut result = HelperResult::default();
    if let Err(e) = apply_limits(&spec.limits) {
        // Refuse to run the command without the limits it was promised.
        result.limit_error = Some(e);
        write_result(&spec.result_path, &result);
        std::process::exit(125);
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.work_dir)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = match cmd.spawn() {
        Ok(mut child) => child.wait(),
        Err(e) => {
            result.spawn_error = Some(format!("cannot start {}: {e}", spec.program.display()));
            write_result(&spec.result_path, &result);
            std::process::exit(127);
        }
    };
    let code = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            result.exit_code = status.code();
            result.signal = status.signal();
            status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        }
        Err(e) => {
            result.spawn_error = Some(format!("wait failed: {e}"));
            125
        }
    };
    // Resources of every waited-for descendant: the command, plus whatever it reaped.
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) {
        let ms = |tv: nix::sys::time::TimeVal| (tv.tv_sec() as u64) * 1000 + (tv.tv_usec() as u64) / 1000;
        result.cpu_ms = ms(usage.user_time()) + ms(usage.system_time());
        result.max_rss_kb = usage.max_rss().max(0) as u64;
    }
    write_result(&spec.result_path, &result);
    // As PID 1 of the namespace, exiting makes the kernel kill whatever the command left.
    std::process::exit(code);
}
