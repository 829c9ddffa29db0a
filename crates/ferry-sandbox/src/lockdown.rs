//! The last steps of the helper before it spawns the command, in this order: drop every
//! capability, set no-new-privileges, restrict the file system (and TCP) with Landlock,
//! install the seccomp deny-list. All of them are inherited across `fork` and `exec`, so
//! the helper applies them to itself and the command starts with them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::thread::{CapabilitySet, CapabilitySets};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Removes every capability from the bounding, ambient, inheritable, permitted and
/// effective sets. After this, even an `exec` as uid 0 gains no capability.
///
/// Returns whether the bounding set could be emptied: without `CAP_SETPCAP` (the fallback
/// without a user namespace, as an ordinary uid) it cannot, and there is nothing in it
/// that an ordinary uid could use once no-new-privileges is set.
pub(crate) fn drop_capabilities() -> Result<bool, String> {
    let mut bounding_cleared = true;
    for cap in CapabilitySet::all().iter() {
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // EINVAL: a capability this kernel does not know.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(rustix::io::Errno::PERM) => bounding_cleared = false,
            Err(e) => return Err(format!("drop {cap:?} from the bounding set: {e}")),
        }
    }
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(format!("clear the ambient capabilities: {e}")),
    }
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(None, CapabilitySets { effective: none, permitted: none, inheritable: none })
        .map_err(|e| format!("clear the capability sets: {e}"))?;
    Ok(bounding_cleared)
}

/// `PR_SET_NO_NEW_PRIVS`: setuid/setcap files grant nothing from here on. Returns
/// whether it reads back as set.
pub(crate) fn set_no_new_privs() -> Result<bool, String> {
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("set no_new_privs: {e}"))?;
    rustix::thread::no_new_privs().map_err(|e| format!("read no_new_privs: {e}"))
}

/// What the command may reach on the file system.
#[derive(Debug, Default)]
pub(crate) struct FsPolicy {
    /// Read and execute, recursively.
    pub read_exec: Vec<PathBuf>,
    /// Read only, recursively (`/proc`).
    pub read: Vec<PathBuf>,
    /// List only, not recursive in effect (`/dev`, `/`).
    pub list: Vec<PathBuf>,
    /// Read and write on single files (device files).
    pub devices: Vec<PathBuf>,
    /// Everything, recursively (`/work`, `/tmp`).
    pub full: Vec<PathBuf>,
}

/// What Landlock enforced.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LandlockApplied {
    /// The kernel's Landlock ABI, when a ruleset was enforced at all.
    pub abi: Option<u32>,
    /// TCP bind and connect are denied (ABI ≥ 4 and requested).
    pub network_denied: bool,
}

/// The ABI whose rights are requested; newer rights are left out on purpose so that the
/// same ruleset means the same thing on every kernel. Lower kernels get the subset they
/// support (best effort), which [`LandlockApplied`] reports.
const FS_ABI: ABI = ABI::V7;
/// UDP bind/send arrived in ABI 8: requested where the kernel has it.
const NET_ABI: ABI = ABI::V8;

/// Restricts this process (and so the command) to `policy`; with `deny_network`, also
/// denies every TCP (and, where supported, UDP) bind and connect. Paths that do not exist
/// are left out.
pub(crate) fn landlock(policy: &FsPolicy, deny_network: bool) -> Result<LandlockApplied, String> {
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(FS_ABI))
        .map_err(err)?
        // Signals and abstract unix sockets only within the sandbox (ABI 6).
        .scope(Scope::from_all(FS_ABI))
        .map_err(err)?;
    if deny_network {
        ruleset = ruleset.handle_access(AccessNet::from_all(NET_ABI)).map_err(err)?;
    }
    let read = AccessFs::from_read(FS_ABI);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let groups: [(&[PathBuf], landlock::BitFlags<AccessFs>); 5] = [
        (&policy.read_exec, read),
        (&policy.read, read & !AccessFs::Execute),
        (&policy.list, AccessFs::ReadDir.into()),
        (&policy.devices, device),
        (&policy.full, AccessFs::from_all(FS_ABI)),
    ];
    let mut created = ruleset.create().map_err(err)?;
    for (paths, access) in groups {
        for p in paths {
            let Ok(fd) = PathFd::new(p) else { continue };
            // A rule on a file may only carry file rights.
            let access = if std::fs::metadata(p).is_ok_and(|m| m.is_dir()) {
                access
            } else {
                access & AccessFs::from_file(FS_ABI)
            };
            created = created.add_rule(PathBeneath::new(fd, access)).map_err(err)?;
        }
    }
    let status = created.restrict_self().map_err(err)?;
    let abi = match (status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, _) => None,
        (_, LandlockStatus::Available { effective_abi, kernel_abi }) => {
            Some(kernel_abi.map_or(effective_abi as u32, |k| k as u32))
        }
        _ => None,
    };
    Ok(LandlockApplied { abi, network_denied: deny_network && abi.is_some_and(|v| v >= 4) })
}

/// A Landlock ruleset that allows everything it handles: applying it shows which ABI the
/// kernel has, without restricting anything (used by the probe).
pub(crate) fn landlock_abi() -> Option<u32> {
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI::V1))
        .ok()?
        .create()
        .ok()?
        .add_rule(PathBeneath::new(PathFd::new("/").ok()?, AccessFs::from_all(ABI::V1)))
        .ok()?;
    let status = created.restrict_self().ok()?;
    match (status.ruleset, status.landlock) {
        (RulesetStatus::NotEnforced, _) => None,
        (_, LandlockStatus::Available { effective_abi, kernel_abi }) => {
            Some(kernel_abi.map_or(effective_abi as u32, |k| k as u32))
        }
        _ => None,
    }
}

/// System calls that fail with EPERM inside the sandbox (see the crate doc for why).
fn denied_syscalls() -> Vec<(&'static str, i64)> {
    macro_rules! calls {
        ($($name:ident),* $(,)?) => { vec![$((stringify!($name), libc::$name as i64)),*] };
    }
    #[allow(unused_mut)]
    let mut calls = calls![
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_unshare,
        SYS_setns,
        SYS_userfaultfd,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_adjtimex,
        SYS_syslog,
        SYS_quotactl,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_kcmp,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend(calls![SYS_iopl, SYS_ioperm]);
    calls
}

#[cfg(test)]
/// The names of [`denied_syscalls`], plus the two conditional ones, for reports and docs.
pub(crate) fn denied_syscall_names() -> Vec<&'static str> {
    let mut names: Vec<_> = denied_syscalls().into_iter().map(|(n, _)| n.trim_start_matches("SYS_")).collect();
    names.extend(["clone (with any CLONE_NEW* flag)", "clone3 (ENOSYS)"]);
    names
}

/// `clone` flags that make namespaces (`CLONE_NEWTIME` shares its bit with the exit
/// signal in `clone`, and `clone3` is refused as a whole).
const CLONE_NEW_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// On x86_64 the same calls exist a second time in the x32 ABI, numbered with this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// The filters, for the running architecture: one deny-list answering EPERM, one that
/// answers ENOSYS to `clone3` (its flags live in memory that seccomp cannot read; ENOSYS
/// makes libc fall back to `clone`, whose flags the first filter checks).
pub(crate) fn seccomp_filters() -> Result<Vec<BpfProgram>, String> {
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let arch = std::env::consts::ARCH.try_into().map_err(err)?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied_syscalls() {
        deny.insert(nr, Vec::new());
        #[cfg(target_arch = "x86_64")]
        deny.insert(nr | X32_SYSCALL_BIT, Vec::new());
    }
    // `clone` matches when any one of the namespace bits is set (the rules are ORed).
    let mut clone_rules = Vec::new();
    for flag in CLONE_NEW_FLAGS {
        let cond =
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    deny.insert(libc::SYS_clone, clone_rules.clone());
    #[cfg(target_arch = "x86_64")]
    deny.insert(libc::SYS_clone | X32_SYSCALL_BIT, clone_rules);
    let eperm =
        SeccompFilter::new(deny, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(err)?;
    let mut clone3: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    #[cfg(target_arch = "x86_64")]
    clone3.insert(libc::SYS_clone3 | X32_SYSCALL_BIT, Vec::new());
    let enosys = SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
        .map_err(err)?;
    Ok(vec![eperm.try_into().map_err(err)?, enosys.try_into().map_err(err)?])
}

/// Installs [`seccomp_filters`] on this process; from here on it cannot be undone.
pub(crate) fn seccomp() -> Result<(), String> {
    for filter in seccomp_filters()? {
        seccompiler::apply_filter(&filter).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build_for_this_architecture() {
        assert_eq!(seccomp_filters().unwrap().len(), 2);
    }

    #[test]
    fn the_crate_doc_names_every_denied_call() {
        let doc = include_str!("../SANDBOX.md");
        for name in denied_syscall_names() {
            let bare = name.split(' ').next().unwrap();
            assert!(doc.contains(&format!("`{bare}`")), "SANDBOX.md does not mention {bare}");
        }
    }
}
