//! `exec`: runs untrusted code in a sandbox ([`ferry_sandbox`]) and answers with what
//! happened.
//!
//! Input:
//!
//! ```json
//! {"language": "python", "code": "print(input())", "args": ["-v"], "stdin": "hi",
//!  "files": {"data.csv": "a,b\n1,2\n"}, "env": {"MODE": "fast"}, "network": false,
//!  "limits": {"memory_mb": 512, "cpu_seconds": 10}, "cache_ttl_ms": 0}
//! ```
//!
//! Only `language` and `code` are required. `language` names an interpreter of the
//! configuration ([`ExecConfig::interpreters`]: `python`, `bash`, `sh` and `node` out of the
//! box; more are a few lines of TOML). The code is written to the interpreter's file in the
//! scratch directory (`main.py`, …), `files` next to it, and the interpreter's command runs
//! there with `args` appended. The command's environment is `env` plus `PATH`, `HOME` and
//! `TMPDIR`: nothing of the server's.
//!
//! Limits: each of [`ExecLimits`] has a default and a server-wide ceiling; a job may ask
//! for any value up to the ceiling, and above it is refused at submission (400, naming the
//! field). Time: the attempt's `timeout_ms` is the hard timeout (this kind's default is
//! [`ExecConfig::default_timeout_ms`], 120 s): SIGKILL to the whole process tree; the job's
//! `soft_timeout_ms` (default 3/4 of it) sends SIGTERM first. Output is captured up to
//! [`ExecConfig::max_output_bytes`] per stream; a stream past it is cut, `truncated` is
//! set and the run is stopped (a flood is treated as a limit hit).
//!
//! Output, whether the attempt succeeded or failed: `exit_code`, `signal`, `stdout`,
//! `stderr`, `truncated`, `duration_ms`, `cpu_ms`, `max_rss_kb`, `limit_hit` (`memory`,
//! `cpu`, `file_size`, `disk`, `processes`, `open_files`, `output`, `timeout` or null), `code_hash`
//! (SHA-256 over language, code, args, stdin and files), `cached` and `isolation`
//! (`full`, or `weak` when the operator allowed running without every sandbox layer).
//!
//! Errors: a non-zero exit or a fatal signal is `exit_status` (not retried by default), a
//! limit hit `resource_limit` (not retried), the hard timeout `timeout`, a sandbox that
//! could not be set up `internal` (retried).
//!
//! Result cache: a job whose `code_hash`, `env` and `network` match a job of the same
//! workspace that succeeded within `cache_ttl_ms` (default [`ExecConfig::cache_ttl_ms`],
//! one hour; 0 disables) gets that job's output at once, with `"cached": true` and
//! `"cached_from"`, without running. `env` and `network` are part of the key although the
//! `code_hash` leaves them out: the same code can behave differently under another
//! environment, and a cache must never answer for a run it did not stand in for.
//!
//! Isolation policy: at start the server probes which sandbox layers this host offers. If
//! one is missing, `exec` jobs are refused (at submission, and by a worker that picks one
//! up) unless the operator set [`ExecConfig::allow_weak_isolation`].

use crate::executor::{Attempt, CachePolicy, Executor};
use async_trait::async_trait;
use ferry_core::{ErrorType, ExecError, SpecError};
use ferry_sandbox::{Isolation, LimitHit, Outcome, Sandbox, SandboxError, SandboxSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// How one language runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpreter {
    /// Program and arguments; a bare program name is looked up in `/usr/local/bin`,
    /// `/usr/bin` and `/bin` inside the sandbox. The job's `args` are appended.
    pub command: Vec<String>,
    /// The file the code is written to, in the scratch directory (the command names it).
    pub file: String,
}

impl Interpreter {
    fn new(command: &[&str], file: &str) -> Self {
        Interpreter { command: command.iter().map(|s| s.to_string()).collect(), file: file.into() }
    }
}

/// Per-run resource limits (see [`ferry_sandbox::Limits`] for what each one bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecLimits {
    /// Address space per process, MiB.
    pub memory_mb: u64,
    /// CPU time per process, seconds.
    pub cpu_seconds: u64,
    /// Largest file written, MiB.
    pub file_size_mb: u64,
    /// Space of the scratch directory and `/tmp` together, MiB.
    pub disk_mb: u64,
    /// Processes at once, the sandbox's own helper included.
    pub processes: u64,
    /// Open files per process.
    pub open_files: u64,
}

impl ExecLimits {
    const NAMES: [&'static str; 6] = ["memory_mb", "cpu_seconds", "file_size_mb", "disk_mb", "processes", "open_files"];

    fn get(&self, name: &str) -> u64 {
        match name {
            "memory_mb" => self.memory_mb,
            "cpu_seconds" => self.cpu_seconds,
            "file_size_mb" => self.file_size_mb,
            "disk_mb" => self.disk_mb,
            "processes" => self.processes,
            _ => self.open_files,
        }
    }

    fn set(&mut self, name: &str, value: u64) {
        match name {
            "memory_mb" => self.memory_mb = value,
            "cpu_seconds" => self.cpu_seconds = value,
            "file_size_mb" => self.file_size_mb = value,
            "disk_mb" => self.disk_mb = value,
            "processes" => self.processes = value,
            _ => self.open_files = value,
        }
    }
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            memory_mb: 1024,
            cpu_seconds: 120,
            file_size_mb: 100,
            disk_mb: 200,
            processes: 10,
            open_files: 256,
        }
    }
}

/// Settings of the `exec` kind (`[exec]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Languages by name.
    pub interpreters: BTreeMap<String, Interpreter>,
    /// Limits of a job that names none.
    pub defaults: ExecLimits,
    /// The most a job may ask for.
    pub ceilings: ExecLimits,
    /// `timeout_ms` of an `exec` job that gives none.
    pub default_timeout_ms: u64,
    /// Output kept per stream (stdout, stderr), bytes.
    pub max_output_bytes: usize,
    /// How old a reused success may be, when a job does not say; 0 disables the cache.
    pub cache_ttl_ms: u64,
    /// Run `exec` jobs even when a sandbox layer is missing on this host.
    pub allow_weak_isolation: bool,
    /// Where scratch directories are made (default: the system's temporary directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch_dir: Option<PathBuf>,
    /// Host paths visible read-only inside the sandbox (default: the system directories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only_paths: Option<Vec<PathBuf>>,
    /// Host paths never readable inside, even under a read-only path. The server adds its
    /// data directory and configuration file.
    pub hidden_paths: Vec<PathBuf>,
    /// util-linux `unshare`, which makes the namespaces (default `/usr/bin/unshare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unshare: Option<PathBuf>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            interpreters: BTreeMap::from([
                ("python".to_string(), Interpreter::new(&["python3", "main.py"], "main.py")),
                ("bash".to_string(), Interpreter::new(&["bash", "main.sh"], "main.sh")),
                ("sh".to_string(), Interpreter::new(&["sh", "main.sh"], "main.sh")),
                ("node".to_string(), Interpreter::new(&["node", "main.js"], "main.js")),
            ]),
            defaults: ExecLimits::default(),
            ceilings: ExecLimits {
                memory_mb: 8192,
                cpu_seconds: 3600,
                file_size_mb: 1024,
                disk_mb: 4096,
                processes: 256,
                open_files: 4096,
            },
            default_timeout_ms: 120_000,
            max_output_bytes: 1024 * 1024,
            cache_ttl_ms: 3_600_000,
            allow_weak_isolation: false,
            scratch_dir: None,
            read_only_paths: None,
            hidden_paths: Vec::new(),
            unshare: None,
        }
    }
}

impl ExecConfig {
    /// Checks values that are well-typed but unusable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, i) in &self.interpreters {
            if i.command.is_empty() || i.command[0].is_empty() {
                return Err(format!("exec.interpreters.{name}.command must name a program"));
            }
            if !plain_file_name(&i.file) {
                return Err(format!("exec.interpreters.{name}.file must be a plain file name"));
            }
        }
        for name in ExecLimits::NAMES {
            let (d, c) = (self.defaults.get(name), self.ceilings.get(name));
            if d == 0 || d > c {
                return Err(format!("exec.defaults.{name} ({d}) must be between 1 and exec.ceilings.{name} ({c})"));
            }
        }
        if self.max_output_bytes == 0 {
            return Err("exec.max_output_bytes must be positive".into());
        }
        Ok(())
    }
}

fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.len() <= 255 && !name.contains(['/', '\0'])
}

/// The input, as submitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    language: String,
    code: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    limits: BTreeMap<String, Value>,
    cache_ttl_ms: Option<u64>,
}

const MAX_ARGS: usize = 256;
const MAX_FILES: usize = 256;
const MAX_ENV: usize = 256;

/// What the server knows about this host's sandbox, once probed.
#[derive(Debug, Clone)]
struct Probe {
    isolation: Isolation,
    missing: Vec<&'static str>,
}

/// The `exec` kind.
pub struct Exec {
    cfg: ExecConfig,
    sandbox: Sandbox,
    probe: OnceLock<Probe>,
}

impl Exec {
    /// An executor with this configuration; the sandbox runs the helper `helper` with
    /// `helper_args` before the spec path (the `ferry` binary re-executes itself).
    pub fn new(cfg: ExecConfig, helper: PathBuf, helper_args: Vec<std::ffi::OsString>) -> Self {
        let mut sandbox = Sandbox { helper, helper_args, ..Sandbox::default() };
        if let Some(dir) = &cfg.scratch_dir {
            sandbox.base_dir = dir.clone();
        }
        if let Some(paths) = &cfg.read_only_paths {
            sandbox.read_only_paths = paths.clone();
        }
        sandbox.hidden_paths.extend(cfg.hidden_paths.iter().cloned());
        if let Some(unshare) = &cfg.unshare {
            sandbox.unshare = unshare.clone();
        }
        Exec { cfg, sandbox, probe: OnceLock::new() }
    }

    /// Probes which sandbox layers this host offers (once) and returns what is missing.
    /// The server calls this at start and reports it.
    pub async fn probe(&self) -> (Isolation, Vec<&'static str>) {
        if self.probe.get().is_none() {
            let isolation = self.sandbox.probe().await;
            let missing = isolation.missing();
            let _ = self.probe.set(Probe { isolation, missing });
        }
        let p = self.probe.get().expect("set above");
        (p.isolation, p.missing.clone())
    }

    /// Why `exec` jobs are refused here, if they are.
    fn refusal(&self) -> Option<String> {
        let p = self.probe.get()?;
        if p.missing.is_empty() || self.cfg.allow_weak_isolation {
            return None;
        }
        Some(format!(
            "exec is disabled on this server: its sandbox lacks {} on this host \
             (set exec.allow_weak_isolation = true to run with weaker isolation)",
            p.missing.join(", ")
        ))
    }

    fn parse(&self, input: &Value) -> Result<(Input, ExecLimits), SpecError> {
        let input: Input = serde_path_to_error::deserialize(input.clone()).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "input".to_string() } else { format!("input.{path}") };
            SpecError::invalid(field, e.into_inner().to_string())
        })?;
        if !self.cfg.interpreters.contains_key(&input.language) {
            let known: Vec<&str> = self.cfg.interpreters.keys().map(String::as_str).collect();
            return Err(SpecError::invalid("input.language", format!("must be one of: {}", known.join(", "))));
        }
        let interpreter = &self.cfg.interpreters[&input.language];
        if input.code.contains('\0') {
            return Err(SpecError::invalid("input.code", "must not contain NUL bytes"));
        }
        if input.args.len() > MAX_ARGS {
            return Err(SpecError::invalid("input.args", format!("at most {MAX_ARGS} arguments")));
        }
        if let Some(i) = input.args.iter().position(|a| a.contains('\0')) {
            return Err(SpecError::invalid(format!("input.args[{i}]"), "must not contain NUL bytes"));
        }
        if input.files.len() > MAX_FILES {
            return Err(SpecError::invalid("input.files", format!("at most {MAX_FILES} files")));
        }
        for name in input.files.keys() {
            if !plain_file_name(name) {
                return Err(SpecError::invalid(
                    format!("input.files.{name}"),
                    "must be a plain file name (no `/`, not `.` or `..`)",
                ));
            }
            if *name == interpreter.file {
                return Err(SpecError::invalid(
                    format!("input.files.{name}"),
                    format!("is where the code goes for {}", input.language),
                ));
            }
        }
        if input.env.len() > MAX_ENV {
            return Err(SpecError::invalid("input.env", format!("at most {MAX_ENV} variables")));
        }
        for (k, v) in &input.env {
            let valid_name = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return Err(SpecError::invalid(
                    format!("input.env.{k}"),
                    "names are letters, digits and `_`, not starting with a digit",
                ));
            }
            if v.contains('\0') {
                return Err(SpecError::invalid(format!("input.env.{k}"), "must not contain NUL bytes"));
            }
        }
        let mut limits = self.cfg.defaults;
        for (name, value) in &input.limits {
            let field = format!("input.limits.{name}");
            if !ExecLimits::NAMES.contains(&name.as_str()) {
                return Err(SpecError::invalid(
                    field,
                    format!("unknown limit; known: {}", ExecLimits::NAMES.join(", ")),
                ));
            }
            let ceiling = self.cfg.ceilings.get(name);
            match value.as_u64() {
                Some(v) if (1..=ceiling).contains(&v) => limits.set(name, v),
                _ => {
                    return Err(SpecError::invalid(
                        field,
                        format!("must be an integer from 1 to {ceiling} (the server's ceiling)"),
                    ));
                }
            }
        }
        Ok((input, limits))
    }
}

/// SHA-256 over language, code, args, stdin and files, in a fixed encoding.
fn code_hash(input: &Input) -> String {
    let canonical = json!({
        "language": input.language, "code": input.code, "args": input.args,
        "stdin": input.stdin, "files": input.files,
    });
    format!("{:x}", Sha256::digest(canonical.to_string()))
}

#[async_trait]
impl Executor for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        if let Some(why) = self.refusal() {
            return Err(SpecError::invalid("kind", why));
        }
        self.parse(input).map(|_| ())
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(self.cfg.default_timeout_ms)
    }

    fn enforces_timeout(&self) -> bool {
        true
    }

    fn cache(&self, input: &Value) -> Option<CachePolicy> {
        let (input, _) = self.parse(input).ok()?;
        let ttl = input.cache_ttl_ms.unwrap_or(self.cfg.cache_ttl_ms);
        if ttl == 0 {
            return None;
        }
        let key = json!({ "code_hash": code_hash(&input), "env": input.env, "network": input.network });
        Some(CachePolicy {
            key: format!("exec:{:x}", Sha256::digest(key.to_string())),
            ttl: Duration::from_millis(ttl),
        })
    }

    fn readiness(&self) -> Option<Value> {
        let p = self.probe.get()?;
        Some(json!({
            "isolation": p.isolation,
            "missing": p.missing,
            "allow_weak_isolation": self.cfg.allow_weak_isolation,
            "accepting": self.refusal().is_none(),
        }))
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let (_, missing) = self.probe().await;
        if let Some(why) = self.refusal() {
            // Another worker may have a complete sandbox.
            return Err(ExecError::new(ErrorType::Internal, why).retryable(true));
        }
        let (input, limits) =
            self.parse(&input).map_err(|e| ExecError::new(ErrorType::Validation, e.to_string()).retryable(false))?;
        let hash = code_hash(&input);
        let interpreter = &self.cfg.interpreters[&input.language];
        let mut spec = SandboxSpec::new(&interpreter.command[0], interpreter.command[1..].iter().cloned());
        spec.args.extend(input.args.iter().cloned());
        spec.stdin = input.stdin.clone().into_bytes();
        spec.files = input.files.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        spec.files.insert(interpreter.file.clone(), input.code.clone().into_bytes());
        spec.env = input.env.clone();
        spec.network = input.network;
        spec.limits = ferry_sandbox::Limits {
            memory_mb: Some(limits.memory_mb),
            cpu_seconds: Some(limits.cpu_seconds),
            file_size_mb: Some(limits.file_size_mb),
            disk_mb: Some(limits.disk_mb),
            processes: Some(limits.processes),
            open_files: Some(limits.open_files),
        };
        spec.hard_timeout = attempt.timeout;
        spec.soft_timeout = attempt.soft_timeout.unwrap_or(attempt.timeout * 3 / 4).min(attempt.timeout);
        spec.max_output_bytes = self.cfg.max_output_bytes;
        let isolation = if missing.is_empty() { "full" } else { "weak" };
        let outcome = match self.sandbox.run(spec).await {
            Ok(o) => o,
            Err(SandboxError::InvalidSpec(m)) => {
                return Err(
                    ExecError::new(ErrorType::Validation, format!("invalid sandbox spec: {m}")).retryable(false)
                );
            }
            Err(e) => return Err(ExecError::new(ErrorType::Internal, format!("sandbox set-up failed: {e}"))),
        };
        let output = result(&outcome, &hash, isolation);
        match error_of(&outcome, &limits, attempt.timeout) {
            None => Ok(output),
            Some(e) => Err(e.with_output(output)),
        }
    }
}

fn result(o: &Outcome, code_hash: &str, isolation: &str) -> Value {
    json!({
        "exit_code": o.exit_code,
        "signal": o.signal,
        "stdout": o.stdout,
        "stderr": o.stderr,
        "truncated": o.truncated,
        "duration_ms": o.duration_ms,
        "cpu_ms": o.cpu_ms,
        "max_rss_kb": o.max_rss_kb,
        "limit_hit": o.limit_hit,
        "code_hash": code_hash,
        "cached": false,
        "isolation": isolation,
    })
}

/// The attempt's error, if the run did not succeed.
fn error_of(o: &Outcome, limits: &ExecLimits, timeout: Duration) -> Option<ExecError> {
    if let Some(hit) = o.limit_hit {
        let what = match hit {
            LimitHit::Timeout => {
                return Some(ExecError::new(
                    ErrorType::Timeout,
                    format!("killed at the hard timeout after {} ms", timeout.as_millis()),
                ));
            }
            LimitHit::Memory => format!("memory limit ({} MiB)", limits.memory_mb),
            LimitHit::Cpu => format!("CPU time limit ({} s)", limits.cpu_seconds),
            LimitHit::FileSize => format!("file size limit ({} MiB)", limits.file_size_mb),
            LimitHit::Disk => format!("scratch disk limit ({} MiB)", limits.disk_mb),
            LimitHit::OpenFiles => format!("open files limit ({})", limits.open_files),
            LimitHit::Processes => format!("process limit ({})", limits.processes),
            LimitHit::Output => "output limit (the run was stopped)".to_string(),
        };
        return Some(ExecError::new(ErrorType::ResourceLimit, format!("{what} hit")));
    }
    match (o.exit_code, o.signal) {
        (Some(0), _) => None,
        (Some(code), _) => Some(ExecError::new(ErrorType::ExitStatus, format!("exited with status {code}"))),
        (None, Some(sig)) => Some(ExecError::new(ErrorType::ExitStatus, format!("killed by signal {sig}"))),
        (None, None) => Some(ExecError::new(ErrorType::Internal, "the sandbox reported neither an exit nor a signal")),
    }
}
