//! The sandbox's file system: built by the helper inside its own mount namespace (where it
//! is root of its user namespace), then entered with `pivot_root`.
//!
//! ```text
//! /            tmpfs, remounted read-only at the end
//! ├─ usr, etc… read-only recursive binds of `Sandbox::read_only_paths` (symlinks recreated)
//! ├─ proc      a fresh procfs of the sandbox's PID namespace
//! ├─ dev       read-only tmpfs: null zero full random urandom (binds), fd/std* symlinks
//! ├─ work      ┐ both on ONE tmpfs of `Limits::disk_mb`: the only writable places
//! └─ tmp       ┘
//! ```
//!
//! **Invariant:** nothing of the host is reachable after [`enter`] but the read-only paths
//! (minus the hidden ones) and the device files above; the run directory in particular is
//! gone, so the command can neither read the spec nor touch the result file.

use std::path::{Component, Path, PathBuf};

use rustix::fs::{StatVfsMountFlags, statvfs};
use rustix::mount::{MountFlags, UnmountFlags, mount_bind, mount_bind_recursive, mount_remount, unmount};

/// What the helper needs to build the root.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct NewRoot {
    pub read_only_paths: Vec<PathBuf>,
    pub hidden_paths: Vec<PathBuf>,
    pub disk_mb: Option<u64>,
}

const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The command's working directory and `HOME` inside the new root.
pub(crate) const WORK: &str = "/work";
/// Its `TMPDIR`, on the same size-limited file system as [`WORK`].
pub(crate) const TMP: &str = "/tmp";

/// A new mount of `fstype` (tmpfs, proc) at `target` with mount options `data`.
pub(crate) fn mount(fstype: &str, target: impl AsRef<Path>, flags: MountFlags, data: &str) -> rustix::io::Result<()> {
    let data = std::ffi::CString::new(data).map_err(|_| rustix::io::Errno::INVAL)?;
    rustix::mount::mount(fstype, target.as_ref(), fstype, flags, Some(data.as_c_str()))
}

fn ctx<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn rctx<T>(what: impl std::fmt::Display, r: rustix::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// `root` + an absolute path: where that host path appears in the new root.
fn inside(root: &Path, abs: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in abs.components() {
        if let Component::Normal(c) = c {
            p.push(c);
        }
    }
    p
}

/// Builds the new root under `run_dir`, copies the given files from `files_dir` into
/// `/work`, and pivots into it. On success the process's root is the new root and its
/// working directory `/work`.
pub(crate) fn enter(run_dir: &Path, files_dir: &Path, spec: &NewRoot) -> Result<(), String> {
    let root = run_dir.join("root");
    let scratch = run_dir.join("scratch");
    for d in [&root, &scratch] {
        ctx(format!("mkdir {}", d.display()), std::fs::create_dir(d))?;
    }
    // The root only holds directories, symlinks and mount points.
    rctx("mount the root tmpfs", mount("tmpfs", &root, MountFlags::NOSUID | MountFlags::NODEV, "mode=0755,size=1m"))?;

    // One tmpfs for /work and /tmp, so that together they hold at most `disk_mb`. Inodes are
    // bounded too: empty files cost kernel memory without counting towards the size.
    let mut opts = String::from("mode=0755");
    if let Some(mb) = spec.disk_mb {
        opts.push_str(&format!(",size={}m,nr_inodes={}", mb.max(1), (mb.max(1) * 256).max(4096)));
    }
    rctx("mount the scratch tmpfs", mount("tmpfs", &scratch, MountFlags::NOSUID | MountFlags::NODEV, opts.as_str()))?;
    for (name, mode) in [("work", 0o755), ("tmp", 0o1777)] {
        use std::os::unix::fs::PermissionsExt as _;
        let d = scratch.join(name);
        ctx(format!("mkdir {}", d.display()), std::fs::create_dir(&d))?;
        ctx("chmod", std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)))?;
    }
    for entry in ctx("read the files", std::fs::read_dir(files_dir))? {
        let entry = ctx("read the files", entry)?;
        let to = scratch.join("work").join(entry.file_name());
        ctx(format!("copy {}", entry.path().display()), std::fs::copy(entry.path(), to))?;
    }
    for name in ["work", "tmp"] {
        let at = root.join(name);
        ctx("mkdir", std::fs::create_dir(&at))?;
        rctx(format!("bind /{name}"), mount_bind(scratch.join(name), &at))?;
    }

    // Read-only paths: after /work and /tmp, so a read-only path under /tmp is still seen.
    let mut bound = Vec::new();
    for p in &spec.read_only_paths {
        if let Some(canonical) = bind_read_only(&root, p)? {
            bound.push(canonical);
        }
    }
    for h in &spec.hidden_paths {
        hide(&root, &bound, h)?;
    }

    // A procfs of our PID namespace (we are its PID 1). Must be mounted while the host's
    // /proc is still visible in this mount namespace, or the kernel refuses.
    let proc_dir = root.join("proc");
    ctx("mkdir proc", std::fs::create_dir(&proc_dir))?;
    let proc_flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rctx("mount /proc", mount("proc", &proc_dir, proc_flags, ""))?;

    let dev = root.join("dev");
    ctx("mkdir dev", std::fs::create_dir(&dev))?;
    rctx("mount /dev", mount("tmpfs", &dev, MountFlags::NOSUID | MountFlags::NOEXEC, "mode=0755,size=64k"))?;
    for name in DEVICES {
        let at = dev.join(name);
        ctx("create device mount point", std::fs::File::create(&at))?;
        rctx(format!("bind /dev/{name}"), mount_bind(Path::new("/dev").join(name), &at))?;
    }
    for (name, target) in DEV_LINKS {
        ctx("symlink in /dev", std::os::unix::fs::symlink(target, dev.join(name)))?;
    }
    // Otherwise the command, root of its user namespace and owner of this tmpfs, could
    // fill it past the disk limit.
    remount_read_only(&dev)?;

    rctx("chdir to the new root", rustix::process::chdir(&root))?;
    // The old root ends up stacked on the new one at "/", and is then detached whole.
    rctx("pivot_root", rustix::process::pivot_root(".", "."))?;
    rctx("detach the old root", unmount(".", UnmountFlags::DETACH))?;
    rctx("chdir /", rustix::process::chdir("/"))?;
    remount_read_only(Path::new("/"))?;
    rctx("chdir /work", rustix::process::chdir(WORK))?;
    Ok(())
}

/// Binds `p` read-only at the same place under `root` (a symlink is recreated instead).
/// Returns the canonical host path when something was bound.
fn bind_read_only(root: &Path, p: &Path) -> Result<Option<PathBuf>, String> {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return Ok(None) };
    if meta.file_type().is_symlink() {
        // `/bin -> usr/bin`: the link itself, resolved inside the new root later.
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else { return Ok(None) };
        let Ok(parent) = std::fs::canonicalize(parent) else { return Ok(None) };
        let at = inside(root, &parent).join(name);
        let target = ctx("readlink", std::fs::read_link(p))?;
        if std::fs::symlink_metadata(&at).is_err() {
            ctx(format!("parent of {}", at.display()), std::fs::create_dir_all(inside(root, &parent)))?;
            ctx(format!("symlink {}", at.display()), std::os::unix::fs::symlink(target, &at))?;
        }
        return Ok(None);
    }
    let canonical = ctx(format!("canonicalize {}", p.display()), std::fs::canonicalize(p))?;
    let at = inside(root, &canonical);
    if meta.is_dir() {
        ctx(format!("mkdir {}", at.display()), std::fs::create_dir_all(&at))?;
    } else {
        if let Some(parent) = at.parent() {
            ctx("mkdir", std::fs::create_dir_all(parent))?;
        }
        ctx("create mount point", std::fs::File::create(&at))?;
    }
    rctx(format!("bind {}", canonical.display()), mount_bind_recursive(&canonical, &at))?;
    // Every mount of the bound tree, the top one and those under it.
    for mount_point in mounts_under(&at)? {
        remount_read_only(&mount_point)?;
    }
    Ok(Some(canonical))
}

/// Covers a hidden path that would otherwise be visible through a read-only bind.
fn hide(root: &Path, bound: &[PathBuf], h: &Path) -> Result<(), String> {
    let Ok(canonical) = std::fs::canonicalize(h) else { return Ok(()) };
    if !bound.iter().any(|b| canonical.starts_with(b)) {
        return Ok(());
    }
    let at = inside(root, &canonical);
    let what = format!("hide {}", canonical.display());
    if canonical.is_dir() {
        let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        rctx(what, mount("tmpfs", &at, flags, "mode=0755,size=4k"))?;
    } else {
        rctx(&what, mount_bind("/dev/null", &at))?;
        remount_read_only(&at)?;
    }
    Ok(())
}

/// Makes one mount read-only. In a user namespace the flags that the more privileged
/// namespace set on the source (nosuid, nodev, noexec, atime) are locked: a remount that
/// does not repeat them fails with EPERM, so they are read back with statvfs and kept.
fn remount_read_only(at: &Path) -> Result<(), String> {
    let st = rctx(format!("statvfs {}", at.display()), statvfs(at))?;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (st_flag, ms_flag) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    rctx(format!("remount {} read-only", at.display()), mount_remount(at, flags, ""))
}

/// Mount points at or under `dir`, parents first (the order of `/proc/self/mountinfo`).
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let info = ctx("read /proc/self/mountinfo", std::fs::read_to_string("/proc/self/mountinfo"))?;
    let mut found = Vec::new();
    for line in info.lines() {
        let Some(field) = line.split(' ').nth(4) else { continue };
        let p = PathBuf::from(unescape(field));
        if p.starts_with(dir) && !found.contains(&p) {
            found.push(p);
        }
    }
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(digits)) = b.get(i + 1..i + 4).map(std::str::from_utf8)
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn paths_inside_the_root() {
        assert_eq!(inside(Path::new("/r"), Path::new("/usr/lib")), PathBuf::from("/r/usr/lib"));
    }
}
