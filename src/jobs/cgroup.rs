//! A cgroup of its own for every job, when the daemon runs as a systemd service that
//! delegates its cgroup to it (`Delegate=yes` in hark-trigger.service); elsewhere, jobs
//! get the process supervisor alone (`contain.rs`), as before.
//!
//! Why a delegated cgroup and not a transient scope per job: a scope is started over D-Bus,
//! which user `hark` may not do (no polkit grant; `run.unit` jobs go through the root-owned
//! unit starter, `unit/starter.rs`), and a round trip through it would cost every job a
//! process. Delegation needs nothing from polkit: systemd hands the
//! service's cgroup to the service's user, and the daemon manages the subtree itself:
//! - at start, [`init`] checks that it runs under systemd (`INVOCATION_ID`), finds its
//!   cgroup in the cgroup v2 hierarchy, and that the cgroup is delegated (systemd's
//!   `user.delegate` or `trusted.delegate` attribute) and writable;
//! - it moves itself into the leaf `<cgroup>/daemon` (systemd's delegation rules: a
//!   cgroup whose children are managed holds no processes of its own), so every job
//!   spawner and supervisor lives there too;
//! - it kills and removes the `job-*` cgroups a daemon killed mid-job left behind;
//! - each job's command joins `<cgroup>/job-<id>` before it runs (`contain.rs`: the
//!   supervisor creates the directory, the command writes itself into `cgroup.procs`
//!   between fork and exec), so everything it starts is in it, `setsid` or not; stopping
//!   the job ends with `cgroup.kill` (Linux 5.14), and the supervisor removes the
//!   directory once it is empty, before the job is recorded.
//!
//! No controller is enabled in the subtree: `cgroup.kill`, `cgroup.procs` and
//! `cgroup.events` need none, and resource limits per job are `run.unit`'s business.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::libc;
use tracing::{info, warn};

/// The delegated cgroup whose `job-<id>` children the jobs get; unset outside systemd.
static BASE: OnceLock<PathBuf> = OnceLock::new();

/// The leaf the daemon (and so its job spawner and the supervisors) moves into.
const DAEMON_LEAF: &str = "daemon";

/// How long a leftover cgroup may take to empty after `cgroup.kill`.
const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

/// The cgroup job `job` gets, when jobs get one.
pub fn job_dir(job: i64) -> Option<PathBuf> {
    BASE.get().map(|base| base.join(format!("job-{job}")))
}

/// Decide, once at start and before the job spawner exists, which containment jobs get,
/// and say it in one log line.
pub fn init() {
    match detect().and_then(|dir| settle(&dir).map(|()| dir)) {
        Ok(dir) => {
            info!(
                "jobs: own cgroup under {} (job-<id>, stopped with cgroup.kill)",
                dir.display()
            );
            let _ = BASE.set(dir);
        }
        Err(reason) => info!("jobs: process supervisor (no delegated cgroup: {reason})"),
    }
}

/// The daemon's own cgroup directory, if it is one jobs can be given children of.
fn detect() -> Result<PathBuf, String> {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return Err("not started by systemd".into());
    }
    let dir = own_dir()?;
    let root = std::fs::read_to_string(dir.join("cgroup.type")).is_err();
    if root {
        return Err(format!("{} is the root cgroup", dir.display()));
    }
    if !delegated(&dir) {
        return Err(format!(
            "{} is not delegated to the service (Delegate=yes)",
            dir.display()
        ));
    }
    for p in [dir.clone(), dir.join("cgroup.procs")] {
        writable(&p).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EROFS) => " (ProtectControlGroups= without a ReadWritePaths= for it)",
                _ => "",
            };
            format!("{} is not writable: {e}{hint}", p.display())
        })?;
    }
    Ok(dir)
}

/// This process's cgroup directory in the cgroup v2 hierarchy, or why there is none.
pub fn own_dir() -> Result<PathBuf, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
    let cgroups = read("/proc/self/cgroup")?;
    let own = own_cgroup(&cgroups).ok_or("no cgroup v2 hierarchy in /proc/self/cgroup")?;
    let mount = cgroup2_mount(&read("/proc/self/mountinfo")?).ok_or("cgroup v2 is not mounted")?;
    Ok(mount.join(own.trim_start_matches('/')))
}

/// The daemon into its leaf, leftovers of an earlier daemon out.
fn settle(dir: &Path) -> Result<(), String> {
    let leaf = dir.join(DAEMON_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    // Every thread of the daemon moves with it.
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("cannot move the daemon into {}: {e}", leaf.display()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().starts_with(b"job-") || !entry.path().is_dir() {
            continue;
        }
        let path = entry.path();
        match remove(&path) {
            Ok(killed) => info!(
                "jobs: removed the leftover cgroup {} of an earlier daemon ({killed} processes killed)",
                path.display()
            ),
            Err(e) => warn!("jobs: cannot remove the leftover cgroup {}: {e}", path.display()),
        }
    }
    Ok(())
}

/// Kill everything in the cgroup at `dir` (its children included), wait (bounded) until it
/// is empty, and remove it; returns how many processes were in it.
pub fn remove(dir: &Path) -> std::io::Result<usize> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    let count = procs.lines().filter(|l| !l.trim().is_empty()).count();
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        // No cgroup.kill before Linux 5.14: one by one, again until it is empty.
        kill_each(&procs);
    }
    let deadline = Instant::now() + LEFTOVER_WAIT;
    while populated(dir)? {
        if Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "still populated {}s after the kill",
                LEFTOVER_WAIT.as_secs()
            )));
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            kill_each(&procs);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_tree(dir)?;
    Ok(count)
}

fn kill_each(procs: &str) {
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `populated 1` in `cgroup.events`: a process in it or in one of its children.
fn populated(dir: &Path) -> std::io::Result<bool> {
    let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l.trim() == "populated 1"))
}

/// Children first: a cgroup with child cgroups cannot be removed.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The path of the cgroup v2 line (`0::/path`) of `/proc/self/cgroup`.
fn own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Where the cgroup v2 hierarchy is mounted whole (root `/`): `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid system. Read from `/proc/self/mountinfo`
/// ("id parent maj:min root mountpoint options... - fstype source superoptions").
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (root == "/").then(|| PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn writable(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: access reads the NUL-terminated path.
    match unsafe { libc::access(c.as_ptr(), libc::W_OK) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// systemd marks a cgroup it delegates with the attribute `user.delegate` (readable by
/// the service's user) or `trusted.delegate` (root only), value `1`.
fn delegated(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    [c"user.delegate", c"trusted.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: getxattr writes at most `value.len()` bytes into our buffer.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n >= 1 && value[0] == b'1'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_and_the_whole_v2_mount_are_found_on_unified_and_hybrid_systems() {
        let hybrid = "9:name=systemd:/system.slice/hark-trigger.service\n1:cpu:/\n0::/system.slice/hark-trigger.service\n";
        assert_eq!(
            own_cgroup(hybrid),
            Some("/system.slice/hark-trigger.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None, "cgroup v1 only");
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
39 30 0:35 / /sys/fs/cgroup/memory rw shared:17 - cgroup cgroup rw,memory
41 30 0:37 /system.slice/hark-trigger.service /sys/fs/cgroup/unified/system.slice/hark-trigger.service rw - cgroup2 cgroup rw
40 30 0:36 / /sys/fs/cgroup/unified rw shared:18 - cgroup2 cgroup rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified")),
            "the bind mount of a subtree (ReadWritePaths=) is not the hierarchy's root"
        );
        let unified = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("1 0 0:1 / /a\\040b rw - cgroup2 x rw\n"),
            Some(PathBuf::from("/a b"))
        );
        assert_eq!(
            cgroup2_mount("39 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"),
            None
        );
    }
}
