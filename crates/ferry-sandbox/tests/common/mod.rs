//! Shared test helpers: a sandbox with its own base directory, and leak checks.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use ferry_sandbox::{Sandbox, SandboxSpec};

pub struct Fixture {
    pub sandbox: Sandbox,
}

/// A sandbox whose scratch directories go under a base of its own (reachable by `nobody`).
pub fn fixture(name: &str) -> Fixture {
    let base: PathBuf = std::env::temp_dir().join("ferry-sandbox-tests").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let sandbox = Sandbox {
        base_dir: base,
        helper: PathBuf::from(env!("CARGO_BIN_EXE_ferry-sandbox-helper")),
        ..Sandbox::default()
    };
    Fixture { sandbox }
}

impl Fixture {
    /// Nothing was left behind: the base directory holds no scratch directory, and no
    /// process has `marker` in its command line.
    pub fn assert_clean(&self, marker: &str) {
        let left: Vec<_> = std::fs::read_dir(&self.sandbox.base_dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "scratch directories left behind: {left:?}");
        std::fs::remove_dir_all(&self.sandbox.base_dir).unwrap();
        let survivors = processes_with(marker);
        assert!(survivors.is_empty(), "sandbox processes survived: {survivors:?}");
    }
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true);
        if cmdline.contains(marker) && !zombie {
            found.push((pid, cmdline));
        }
    }
    found
}

/// `sh -c script` with short timeouts.
pub fn sh(script: &str) -> SandboxSpec {
    let mut spec = SandboxSpec::new("sh", ["-c", script]);
    spec.soft_timeout = Duration::from_secs(2);
    spec.hard_timeout = Duration::from_secs(3);
    spec
}
