//! What the host lets the sandbox do, found once per configuration by running the helper
//! the way a real run does ([`Sandbox::probe`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Sandbox;

/// The isolation layers: those the host supports ([`Sandbox::probe`]), or those a run
/// actually had ([`crate::Outcome::isolation`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub user_namespace: bool,
    pub pid_namespace: bool,
    pub mount_namespace: bool,
    pub network_namespace: bool,
    pub ipc_namespace: bool,
    pub uts_namespace: bool,
    /// The kernel's Landlock ABI version; `None` when Landlock is unavailable.
    pub landlock_abi: Option<u32>,
    /// The seccomp deny-list can be (or was) installed.
    pub seccomp: bool,
    /// `PR_SET_NO_NEW_PRIVS` can be (or was) set.
    pub no_new_privs: bool,
}

impl Isolation {
    /// The layers that are missing, by name (`"mount_namespace"`, `"landlock"`, ...).
    pub fn missing(&self) -> Vec<&'static str> {
        let flags = [
            (self.user_namespace, "user_namespace"),
            (self.pid_namespace, "pid_namespace"),
            (self.mount_namespace, "mount_namespace"),
            (self.network_namespace, "network_namespace"),
            (self.ipc_namespace, "ipc_namespace"),
            (self.uts_namespace, "uts_namespace"),
            (self.landlock_abi.is_some(), "landlock"),
            (self.seccomp, "seccomp"),
            (self.no_new_privs, "no_new_privs"),
        ];
        flags.into_iter().filter(|(ok, _)| !ok).map(|(_, name)| name).collect()
    }

    /// Every layer is there.
    pub fn full(&self) -> bool {
        self.missing().is_empty()
    }

    /// Everything a run in namespaces needs (the sandbox runs without any namespace
    /// otherwise).
    pub(crate) fn namespaces(&self) -> bool {
        self.user_namespace
            && self.pid_namespace
            && self.mount_namespace
            && self.network_namespace
            && self.ipc_namespace
            && self.uts_namespace
    }

    /// Landlock can deny TCP bind and connect (ABI 4, Linux 6.7).
    pub(crate) fn landlock_network(&self) -> bool {
        self.landlock_abi.is_some_and(|v| v >= 4)
    }
}

/// What `helper --probe` prints.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct ProbeReport {
    /// Could mount a tmpfs and a procfs (only tried inside namespaces).
    pub mounts: bool,
    pub landlock_abi: Option<u32>,
    pub seccomp: bool,
    pub no_new_privs: bool,
}

/// The last argument that makes the helper probe instead of run; `NS` tells it that it
/// is in its own namespaces, where trying mounts changes nothing outside.
pub(crate) const PROBE_ARG: &str = "--probe";
pub(crate) const PROBE_NS_ARG: &str = "--probe-in-namespaces";

/// The `unshare` flags of a run in namespaces (the network one only without network).
pub(crate) const UNSHARE_FLAGS: [&str; 8] =
    ["--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts"];

type ProbeKey = (PathBuf, Option<(u32, u32)>, PathBuf, Vec<OsString>);

impl Sandbox {
    /// The isolation this configuration gets on this host. Probed once per configuration
    /// (`unshare` path, uid, helper and its arguments) by running the helper, then cached.
    pub async fn probe(&self) -> Isolation {
        static PROBES: OnceLock<Mutex<HashMap<ProbeKey, Isolation>>> = OnceLock::new();
        let key = (self.unshare.clone(), self.run_as, self.helper.clone(), self.helper_args.clone());
        let probes = PROBES.get_or_init(Default::default);
        if let Some(&known) = probes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return known;
        }
        let isolation = self.probe_uncached().await;
        if !isolation.full() {
            tracing::warn!(missing = ?isolation.missing(), "the sandbox runs with weaker isolation on this host");
        }
        probes.lock().unwrap_or_else(|e| e.into_inner()).insert(key, isolation);
        isolation
    }

    async fn probe_uncached(&self) -> Isolation {
        let mut all = Vec::from(UNSHARE_FLAGS.map(OsString::from));
        all.push("--net".into());
        all.push("--".into());
        all.push(self.helper.clone().into());
        all.extend(self.helper_args.iter().cloned());
        all.push(PROBE_NS_ARG.into());
        if let Some(out) = self.probe_command(&self.unshare, &all).await
            && let Ok(report) = serde_json::from_slice::<ProbeReport>(&out)
            && report.mounts
        {
            return Isolation {
                user_namespace: true,
                pid_namespace: true,
                mount_namespace: true,
                network_namespace: true,
                ipc_namespace: true,
                uts_namespace: true,
                landlock_abi: report.landlock_abi,
                seccomp: report.seccomp,
                no_new_privs: report.no_new_privs,
            };
        }
        // Something is missing: say which namespace, then probe the rest without any.
        let user = ["--user", "--map-root-user"];
        let ns = |extra: &'static [&'static str]| {
            let args: Vec<OsString> = user.iter().chain(extra).chain(&["true"]).map(OsString::from).collect();
            async move { self.probe_command(&self.unshare, &args).await.is_some() }
        };
        let mut args = self.helper_args.clone();
        args.push(PROBE_ARG.into());
        let report = self
            .probe_command(&self.helper, &args)
            .await
            .and_then(|out| serde_json::from_slice::<ProbeReport>(&out).ok())
            .unwrap_or_default();
        Isolation {
            user_namespace: ns(&[]).await,
            pid_namespace: ns(&["--pid", "--fork", "--kill-child"]).await,
            // Seen as missing when it cannot hold the mounts a run needs.
            mount_namespace: false,
            network_namespace: ns(&["--net"]).await,
            ipc_namespace: ns(&["--ipc"]).await,
            uts_namespace: ns(&["--uts"]).await,
            landlock_abi: report.landlock_abi,
            seccomp: report.seccomp,
            no_new_privs: report.no_new_privs,
        }
    }

    /// Runs a probe as the sandbox uid; its standard output when it succeeded.
    async fn probe_command(&self, program: &std::path::Path, args: &[OsString]) -> Option<Vec<u8>> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(Duration::from_secs(10), cmd.output()).await.ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_every_absent_layer() {
        let mut i = Isolation {
            user_namespace: true,
            pid_namespace: true,
            mount_namespace: true,
            network_namespace: true,
            ipc_namespace: true,
            uts_namespace: true,
            landlock_abi: Some(7),
            seccomp: true,
            no_new_privs: true,
        };
        assert!(i.full() && i.namespaces() && i.landlock_network());
        i.mount_namespace = false;
        i.landlock_abi = Some(3);
        assert_eq!(i.missing(), ["mount_namespace"]);
        assert!(!i.namespaces() && !i.landlock_network());
        assert_eq!(Isolation::default().missing().len(), 9);
    }
}
