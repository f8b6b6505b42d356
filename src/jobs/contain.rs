//! Containment of one job's processes without systemd: a per-job supervisor that nothing
//! the command starts can escape, `setsid` and double forks included.
//!
//! A process group is not enough: `setsid` (or `setpgid`) leaves it, so the timeout's
//! `killpg` misses what a daemonizing command left behind, and waiting for the leader
//! alone lets a grandchild that closed its pipes run on after its job is recorded.
//!
//! So the runner's child is not the command itself but a supervisor forked in `pre_exec`
//! (between std's fork and exec), which:
//! - is a child subreaper (`PR_SET_CHILD_SUBREAPER`): every orphan of the job is
//!   re-parented to it, so every process of the job stays among its descendants;
//! - forks the command (which goes on to std's `execvp`) and reaps everything;
//! - when the command exits, or on SIGTERM (cancel, timeout, or the daemon dying: its
//!   parent-death signal), sends SIGTERM to all its descendants, waits `grace`, then
//!   SIGKILLs whatever is left, again until nothing is left;
//! - then exits the way the command did (the same code, or the same signal), so the runner
//!   reads the command's status from it and records the job only when nothing of it runs.
//!
//! The supervisor runs in the child of a multi-threaded process, where only
//! async-signal-safe calls are allowed: it never allocates (its process table is allocated
//! before the fork), and uses raw system calls on stack buffers. Descendants are found by
//! reading every `/proc/<pid>/stat` for its parent pid.
//!
//! When the daemon has a delegated cgroup (`cgroup.rs`), the supervisor also puts the job
//! in a cgroup of its own: it creates `job-<id>` before forking the command, the command
//! writes itself into that cgroup's `cgroup.procs` before it execs (so before it can fork),
//! stopping signals the cgroup's members as well and ends with `cgroup.kill`, and the
//! supervisor exits only once the cgroup is empty, after removing it. The supervisor
//! itself stays outside (in the daemon's leaf), so `cgroup.kill` never reaches it. A
//! command that cannot join says so on its stderr and runs contained by the supervisor
//! alone.
//!
//! A job in a unit (`run.unit`) gets its cgroup from systemd instead (`src/jobs/unit.rs`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::libc;

/// Most processes on the machine the supervisor's table holds when it looks for its
/// descendants; beyond that, the rest are found on its next pass, once some have died.
const TABLE: usize = 32 * 1024;

/// How often the supervisor sends SIGKILL again while descendants are still there after
/// the grace period (a process forking as it dies).
const KILL_EVERY_MS: i64 = 20;

/// The job's cgroup, its paths built before the fork (the supervisor may not allocate).
struct Cgroup {
    dir: CString,
    procs: CString,
    kill: CString,
    events: CString,
    /// What the command writes on its stderr when it cannot join.
    complaint: Vec<u8>,
}

impl Cgroup {
    fn new(dir: &Path) -> Option<Cgroup> {
        let at = |name: &str| CString::new(dir.join(name).as_os_str().as_bytes()).ok();
        Some(Cgroup {
            dir: CString::new(dir.as_os_str().as_bytes()).ok()?,
            procs: at("cgroup.procs")?,
            kill: at("cgroup.kill")?,
            events: at("cgroup.events")?,
            complaint: format!(
                "hark: cannot put this job in its cgroup {} (errno ",
                dir.display()
            )
            .into_bytes(),
        })
    }
}

/// Run the command of `cmd` under a supervisor; `grace` is between SIGTERM and SIGKILL;
/// `cgroup`, the job's own cgroup when it gets one (created by the supervisor). The child
/// the runner gets (and signals) is the supervisor.
pub fn supervise(cmd: &mut tokio::process::Command, grace: Duration, cgroup: Option<&Path>) {
    supervise_std(cmd.as_std_mut(), grace, cgroup);
}

/// [`supervise`] for std's `Command` (the job spawner's).
pub fn supervise_std(cmd: &mut std::process::Command, grace: Duration, cgroup: Option<&Path>) {
    use std::os::unix::process::CommandExt;
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut table: Vec<(i32, i32)> = Vec::with_capacity(TABLE);
    let cgroup = cgroup.and_then(Cgroup::new);
    // SAFETY: the closure runs between fork and exec; `split` only makes
    // async-signal-safe calls and never allocates (`table` has its capacity already,
    // the cgroup's paths are built).
    unsafe {
        cmd.pre_exec(move || split(grace_ms, &mut table, cgroup.as_ref()));
    }
}

fn errno() -> libc::c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// In std's forked child: become the supervisor and fork the command, which returns to
/// std to be exec'd. Never returns in the supervisor.
unsafe fn split(
    grace_ms: i64,
    table: &mut Vec<(i32, i32)>,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<()> {
    // Every signal is blocked from before the fork, so none is lost before the supervisor
    // waits for them with sigtimedwait (the daemon's handlers are still installed here).
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    // The daemon dying (kill -9, OOM) stops the job like a cancel does.
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0
        || libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let supervisor = libc::getpid();
    // 0: the job's cgroup is there (new, or left by an earlier start of the same job).
    let made = cgroup.map(|c| {
        if libc::mkdir(c.dir.as_ptr(), 0o755) == 0 {
            return 0;
        }
        match errno() {
            libc::EEXIST => 0,
            e => e,
        }
    });
    let leader = libc::fork();
    if leader < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if leader == 0 {
        // The command: it dies with its supervisor, and starts with no signal blocked. Not
        // with the forking thread's mask: the job spawner blocks SIGCHLD for its signalfd,
        // and a shell that inherits that waits for ever in `wait` (a mask survives exec).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != supervisor {
            libc::_exit(1);
        }
        if let (Some(c), Some(made)) = (cgroup, made) {
            let failed = match made {
                0 => join(c),
                e => e,
            };
            if failed != 0 {
                complain(c, failed);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        return Ok(());
    }
    run_supervisor(leader, grace_ms, table, cgroup.filter(|_| made == Some(0)))
}

/// The calling process into the cgroup; 0, or the errno.
unsafe fn join(c: &Cgroup) -> libc::c_int {
    let fd = libc::open(c.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return errno();
    }
    let r = libc::write(fd, b"0".as_ptr().cast(), 1);
    let e = if r == 1 { 0 } else { errno() };
    libc::close(fd);
    e
}

/// On the command's stderr (std has set up its descriptors by now): the job runs, but
/// contained by its supervisor only.
unsafe fn complain(c: &Cgroup, err: libc::c_int) {
    let mut digits = [0u8; 12];
    let mut n = digits.len();
    let mut v = err.unsigned_abs();
    loop {
        n -= 1;
        digits[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || n == 0 {
            break;
        }
    }
    libc::write(2, c.complaint.as_ptr().cast(), c.complaint.len());
    libc::write(2, digits[n..].as_ptr().cast(), digits.len() - n);
    let tail = b"); only its supervisor contains it\n";
    libc::write(2, tail.as_ptr().cast(), tail.len());
}

/// `cgroup.events` says `populated 1`; false when it cannot be read.
unsafe fn populated(c: &Cgroup) -> bool {
    let fd = libc::open(c.events.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 256];
    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
    libc::close(fd);
    n > 0 && buf[..n as usize].windows(11).any(|w| w == b"populated 1")
}

/// Send `sig` to every process in the cgroup; SIGKILL through `cgroup.kill` when the kernel
/// has it (atomic against a process forking meanwhile).
unsafe fn signal_cgroup(c: &Cgroup, sig: libc::c_int) {
    if sig == libc::SIGKILL {
        let fd = libc::open(c.kill.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            let done = libc::write(fd, b"1".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if done {
                return;
            }
        }
    }
    let fd = libc::open(c.procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut pid: i32 = 0;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            match b {
                b'0'..=b'9' => pid = pid.saturating_mul(10).saturating_add(i32::from(b - b'0')),
                _ => {
                    if pid > 0 {
                        libc::kill(pid, sig);
                    }
                    pid = 0;
                }
            }
        }
    }
    if pid > 0 {
        libc::kill(pid, sig);
    }
    libc::close(fd);
}

/// Everything of the job: the supervisor's descendants, and the cgroup's members.
unsafe fn stop_all(
    me: libc::pid_t,
    sig: libc::c_int,
    table: &mut Vec<(i32, i32)>,
    cgroup: Option<&Cgroup>,
) {
    if let Some(c) = cgroup {
        signal_cgroup(c, sig);
    }
    signal_descendants(me, sig, table);
}

fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// How long after the SIGKILLs began the supervisor still waits for a cgroup whose last
/// members are not its descendants (moved in from outside) before it exits anyway.
const CGROUP_GIVE_UP_MS: i64 = 5_000;

unsafe fn run_supervisor(
    leader: libc::pid_t,
    grace_ms: i64,
    table: &mut Vec<(i32, i32)>,
    cgroup: Option<&Cgroup>,
) -> ! {
    // The command has its own copies of the pipes and of std's exec-error pipe; ours would
    // keep the runner waiting for EOF.
    if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
        for fd in 0..1024 {
            libc::close(fd);
        }
    }
    // Children must stay waitable whatever the daemon set for SIGCHLD.
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    libc::sigaction(libc::SIGCHLD, &dfl, std::ptr::null_mut());
    let mut wanted: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut wanted);
    for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        libc::sigaddset(&mut wanted, s);
    }
    let me = libc::getpid();
    let mut leader_status: Option<libc::c_int> = None;
    let mut deadline: Option<i64> = None;
    loop {
        let mut children_left = true;
        loop {
            let mut st: libc::c_int = 0;
            let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
            if r > 0 {
                if r == leader {
                    leader_status = Some(st);
                }
                continue;
            }
            if r < 0 {
                children_left = false;
            }
            break;
        }
        if let (Some(st), false) = (leader_status, children_left) {
            let empty = cgroup.is_none_or(|c| !populated(c));
            if empty || deadline.is_some_and(|d| now_ms() >= d.saturating_add(CGROUP_GIVE_UP_MS)) {
                if let Some(c) = cgroup {
                    // Before the job is recorded; a cgroup the command made inside it
                    // keeps it (the daemon removes it at its next start).
                    libc::rmdir(c.dir.as_ptr());
                }
                exit_like(st);
            }
        }
        if leader_status.is_some() && deadline.is_none() {
            // The command is done; what it left behind is stopped before the job ends.
            stop_all(me, libc::SIGTERM, table, cgroup);
            deadline = Some(now_ms().saturating_add(grace_ms));
        }
        let wait_ms = match deadline {
            Some(d) if now_ms() >= d => {
                stop_all(me, libc::SIGKILL, table, cgroup);
                KILL_EVERY_MS
            }
            Some(d) => (d - now_ms()).max(1),
            None => 60_000,
        };
        let ts = libc::timespec {
            tv_sec: wait_ms / 1000,
            tv_nsec: (wait_ms % 1000) * 1_000_000,
        };
        let sig = libc::sigtimedwait(&wanted, std::ptr::null_mut(), &ts);
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) && deadline.is_none() {
            stop_all(me, libc::SIGTERM, table, cgroup);
            deadline = Some(now_ms().saturating_add(grace_ms));
        }
    }
}

/// Exit with the command's wait status: its code, or death by its signal (without a core).
unsafe fn exit_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, sig);
        libc::kill(libc::getpid(), sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::_exit(128 + sig);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

/// Send `sig` to every descendant of `me` (children of children too, whatever their
/// session or group), found in `/proc`.
unsafe fn signal_descendants(me: libc::pid_t, sig: libc::c_int, table: &mut Vec<(i32, i32)>) {
    table.clear();
    read_proc(table);
    // Sorted by pid, so a parent is found by binary search.
    table.sort_unstable();
    // Mark descendants by negating their parent field: a fixed point over the table.
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..table.len() {
            let (pid, ppid) = table[i];
            if ppid < 0 || pid == me {
                continue;
            }
            let ours = ppid == me
                || table
                    .binary_search_by_key(&ppid, |&(p, _)| p)
                    .is_ok_and(|j| table[j].1 < 0);
            if ours {
                table[i].1 = -ppid.max(1);
                changed = true;
            }
        }
    }
    for &(pid, ppid) in table.iter() {
        if ppid < 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Fill `table` with (pid, parent pid) of the processes in `/proc`, up to its capacity.
unsafe fn read_proc(table: &mut Vec<(i32, i32)>) {
    let proc_fd = libc::open(
        c"/proc".as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if proc_fd < 0 {
        return;
    }
    let mut buf = [0u8; 8192];
    'dir: loop {
        let n = libc::syscall(
            libc::SYS_getdents64,
            proc_fd,
            buf.as_mut_ptr(),
            buf.len() as libc::c_uint,
        );
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..(off + reclen).min(n as usize)];
            off += reclen;
            let Some(pid) = parse_int(name) else {
                continue;
            };
            if table.len() == table.capacity() {
                break 'dir;
            }
            if let Some(ppid) = parent_of(proc_fd, name) {
                table.push((pid, ppid));
            }
        }
    }
    libc::close(proc_fd);
}

/// A decimal number up to the first NUL, or None.
fn parse_int(bytes: &[u8]) -> Option<i32> {
    let mut v: i32 = 0;
    let mut digits = 0;
    for &b in bytes {
        match b {
            b'0'..=b'9' => {
                v = v.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
                digits += 1;
            }
            0 | b' ' => break,
            _ => return None,
        }
    }
    (digits > 0).then_some(v)
}

/// The parent pid in `/proc/<name>/stat` (the field after the state, which follows the
/// last `)`: a command name may contain spaces and parentheses).
unsafe fn parent_of(proc_fd: libc::c_int, name: &[u8]) -> Option<i32> {
    let mut path = [0u8; 32];
    let digits = name.iter().take_while(|&&b| b != 0).count();
    if digits + 6 > path.len() {
        return None;
    }
    path[..digits].copy_from_slice(&name[..digits]);
    path[digits..digits + 5].copy_from_slice(b"/stat");
    let fd = libc::openat(
        proc_fd,
        path.as_ptr().cast(),
        libc::O_RDONLY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return None;
    }
    let mut stat = [0u8; 1024];
    let n = libc::read(fd, stat.as_mut_ptr().cast(), stat.len());
    libc::close(fd);
    if n <= 0 {
        return None;
    }
    let stat = &stat[..n as usize];
    let close = stat.iter().rposition(|&b| b == b')')?;
    // ") S PPID ..."
    let rest = stat.get(close + 4..)?;
    parse_int(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_takes_the_parent_after_the_last_parenthesis() {
        assert_eq!(parse_int(b"1234\0junk"), Some(1234));
        assert_eq!(parse_int(b"self\0"), None);
        assert_eq!(parse_int(b"\0"), None);
        assert_eq!(parse_int(b"99999999999"), None);
        let me = std::process::id().to_string();
        let mut name = me.clone().into_bytes();
        name.push(0);
        let proc_fd = unsafe {
            libc::open(
                c"/proc".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(proc_fd >= 0);
        let ppid = unsafe { parent_of(proc_fd, &name) };
        unsafe { libc::close(proc_fd) };
        assert_eq!(ppid, Some(nix::unistd::getppid().as_raw()));
    }
}
