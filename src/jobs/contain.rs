//! Containment of one job's processes without systemd: a per-job supervisor that nothing
//! the command starts can escape, `setsid` and double forks included.
//!
//! A process group is not enough: `setsid` (or `setpgid`) leaves it, so the timeout's
//! `killpg` misses what a daemonizing command left behind, and waiting for the leader
//! alone lets a grandchild that closed its pipes run on after its job is recorded.
//!
//! So the process the runner waits for is not the command itself but its supervisor, which:
//! - is a child subreaper (`PR_SET_CHILD_SUBREAPER`): every orphan of the job is
//!   re-parented to it, so every process of the job stays among its descendants;
//! - starts the command and reaps everything;
//! - when the command exits, or on SIGTERM (cancel, timeout, or its parent dying: its
//!   parent-death signal), sends SIGTERM to all its descendants, waits `grace`, then
//!   SIGKILLs whatever is left, again until nothing is left;
//! - then exits the way the command did (the same code, or the same signal), so the runner
//!   reads the command's status from it and records the job only when nothing of it runs.
//!
//! Two ways to start one:
//! - [`start`], the job spawner's (spawner.rs): nothing is forked. The supervisor is a
//!   `clone(CLONE_VM)` of the spawner, a process of its own that shares the spawner's
//!   memory (so no page tables are copied and no page is copy-on-write), and the command
//!   is a `clone(CLONE_VM | CLONE_VFORK)` of the supervisor that execs, as `posix_spawn`
//!   does. Everything both read is built beforehand ([`Prepared`]); whether the command
//!   started is reported on a pipe that its exec closes, so the spawner never waits for an
//!   exec. Sharing memory means sharing libc's thread-local errno too, so the supervisor
//!   and the command make raw system calls (`sys.rs`) and never allocate.
//! - [`supervise`], the daemon's fallback when it has no spawner: the supervisor is forked
//!   by std's `Command` in `pre_exec` and forks the command, which returns to std's exec.
//!   That child of a multi-threaded process may not allocate either.
//!
//! Descendants are found by reading every `/proc/<pid>/stat` for its parent pid.
//!
//! When the daemon has a delegated cgroup (`cgroup.rs`), the supervisor also puts the job
//! in a cgroup of its own: it creates `job-<id>` before starting the command, the command
//! writes itself into that cgroup's `cgroup.procs` before it execs (so before it can fork),
//! stopping signals the cgroup's members as well and ends with `cgroup.kill`, and the
//! supervisor exits only once the cgroup is empty, after removing it. The supervisor
//! itself stays outside (in the daemon's leaf), so `cgroup.kill` never reaches it. A
//! command that cannot join says so on its stderr and runs contained by the supervisor
//! alone.
//!
//! A job in a unit (`run.unit`) gets its cgroup from systemd instead (`src/jobs/unit.rs`).

use std::ffi::{c_void, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::libc::{self, c_char, c_int, pid_t};

use super::sys;

/// Most processes on the machine the supervisor's table holds when it looks for its
/// descendants; beyond that, the rest are found on its next pass, once some have died.
const TABLE: usize = 32 * 1024;

/// How often the supervisor sends SIGKILL again while descendants are still there after
/// the grace period (a process forking as it dies).
const KILL_EVERY_MS: i64 = 20;

/// The exit code of a supervisor whose command could not start (its errno is on the
/// status pipe).
const CANNOT_START: c_int = 127;

/// The job's cgroup, its paths built before the supervisor starts (it may not allocate).
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

    /// Before the command starts: 0 when the job's cgroup is there (new, or left by an
    /// earlier start of the same job), else the errno.
    unsafe fn make(&self) -> c_int {
        match sys::mkdir(&self.dir, 0o755) {
            0 => 0,
            e if e == -(libc::EEXIST as isize) => 0,
            e => -e as c_int,
        }
    }

    /// In the command, before its exec: into the cgroup (`made`: what [`Cgroup::make`]
    /// said), or a line on its stderr (set up by now) saying it runs without.
    unsafe fn enter(&self, made: c_int) {
        let failed = match made {
            0 => self.join(),
            e => e,
        };
        if failed != 0 {
            self.complain(failed);
        }
    }

    /// The calling process into the cgroup; 0, or the errno.
    unsafe fn join(&self) -> c_int {
        let fd = sys::open(&self.procs, libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return -fd as c_int;
        }
        let r = sys::write(fd as c_int, b"0");
        sys::close(fd as c_int);
        match r {
            1 => 0,
            r if r < 0 => -r as c_int,
            _ => libc::EIO,
        }
    }

    unsafe fn complain(&self, err: c_int) {
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
        sys::write(2, &self.complaint);
        sys::write(2, &digits[n..]);
        sys::write(2, b"); only its supervisor contains it\n");
    }

    /// `cgroup.events` says `populated 1`; false when it cannot be read.
    unsafe fn populated(&self) -> bool {
        let fd = sys::open(&self.events, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 256];
        let n = sys::read(fd as c_int, &mut buf);
        sys::close(fd as c_int);
        n > 0 && buf[..n as usize].windows(11).any(|w| w == b"populated 1")
    }

    /// Send `sig` to every process in the cgroup; SIGKILL through `cgroup.kill` when the
    /// kernel has it (atomic against a process forking meanwhile).
    unsafe fn signal(&self, sig: c_int) {
        if sig == libc::SIGKILL {
            let fd = sys::open(&self.kill, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let done = sys::write(fd as c_int, b"1") == 1;
                sys::close(fd as c_int);
                if done {
                    return;
                }
            }
        }
        let fd = sys::open(&self.procs, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut pid: i32 = 0;
        loop {
            let n = sys::read(fd as c_int, &mut buf);
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                match b {
                    b'0'..=b'9' => pid = pid.saturating_mul(10).saturating_add(i32::from(b - b'0')),
                    _ => {
                        if pid > 0 {
                            sys::kill(pid, sig);
                        }
                        pid = 0;
                    }
                }
            }
        }
        if pid > 0 {
            sys::kill(pid, sig);
        }
        sys::close(fd as c_int);
    }
}

// ---------------------------------------------------------------------------------------
// Started by the job spawner: no fork

/// The two stacks a job's clones run on, with a guard page below each.
pub struct Stacks {
    base: *mut u8,
    len: usize,
    page: usize,
}

/// The command runs on this only until its exec; the supervisor's deepest path (reading
/// `/proc`) needs about 16 KiB.
const LEADER_STACK: usize = 64 * 1024;
const SUPERVISOR_STACK: usize = 128 * 1024;

impl Stacks {
    fn new() -> std::io::Result<Stacks> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096);
        let len = 2 * page + LEADER_STACK + SUPERVISOR_STACK;
        // SAFETY: a new anonymous mapping; the guard pages are inside it.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let base = base.cast::<u8>();
            let stacks = Stacks { base, len, page };
            for guard in [0, page + LEADER_STACK] {
                if libc::mprotect(base.add(guard).cast(), page, libc::PROT_NONE) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(stacks)
        }
    }

    fn leader_top(&self) -> *mut c_void {
        // SAFETY: inside the mapping (stacks grow down from here).
        unsafe { self.base.add(self.page + LEADER_STACK).cast() }
    }

    fn supervisor_top(&self) -> *mut c_void {
        // SAFETY: the end of the mapping.
        unsafe { self.base.add(self.len).cast() }
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        // SAFETY: our mapping, no longer used by any clone (its supervisor was reaped).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// What a supervisor needs that is not the command: its stacks and its process table.
/// The spawner keeps them for the next job once the supervisor is reaped.
pub struct Memory {
    stacks: Stacks,
    table: Vec<(i32, i32)>,
}

impl Memory {
    pub fn new() -> std::io::Result<Memory> {
        Ok(Memory {
            stacks: Stacks::new()?,
            table: Vec::with_capacity(TABLE),
        })
    }
}

/// A command's environment: the variables built for it, and pointers to `name=value`
/// strings the spawner keeps for as long as it runs (the inherited ones).
pub struct Environment {
    pub own: Vec<CString>,
    pub kept: Vec<*const c_char>,
}

/// A command the job spawner starts, built before its supervisor exists. The supervisor
/// and the command read it (the supervisor writes its table) while it runs, so the spawner
/// keeps it where it is, untouched, until the supervisor is reaped.
pub struct Prepared {
    /// Where to look for the program, in order: its path, or each `PATH` entry with it.
    programs: Vec<CString>,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _env: Vec<CString>,
    /// `_env`'s and the inherited variables', then NULL.
    env: Vec<*const c_char>,
    workdir: Option<CString>,
    /// The command's stdin (or -1: the spawner's own, /dev/null), stdout and stderr.
    stdio: [c_int; 3],
    /// The write end of the status pipe: the errno of a command that cannot start.
    status: c_int,
    grace_ms: i64,
    cgroup: Option<Cgroup>,
    spawner: pid_t,
    memory: Memory,
}

impl Prepared {
    /// `programs` in the order the command's exec tries them; `stdio` and `status` stay the
    /// caller's to close (after [`start`]: the supervisor has its own copies).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        programs: Vec<CString>,
        argv: Vec<CString>,
        env: Environment,
        workdir: Option<CString>,
        stdio: [c_int; 3],
        status: c_int,
        grace: Duration,
        cgroup: Option<&Path>,
        memory: Memory,
    ) -> Prepared {
        let pointers = |v: &[CString], more: &[*const c_char]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(more.iter().copied())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Prepared {
            programs,
            argv: pointers(&argv, &[]),
            _argv: argv,
            env: pointers(&env.own, &env.kept),
            _env: env.own,
            workdir,
            stdio,
            status,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            cgroup: cgroup.and_then(Cgroup::new),
            spawner: std::process::id() as pid_t,
            memory,
        }
    }

    /// Its memory, for the next job; only once its supervisor has been reaped.
    pub fn into_memory(self) -> Memory {
        self.memory
    }
}

/// Start the supervisor of `job`; its pid. The supervisor shares the caller's memory where
/// [`sys::SHARED_MEMORY_SAFE`], and has a copy of it elsewhere.
///
/// # Safety
/// Call from a single-threaded process (the spawner), and leave `job` in place, unread
/// and unwritten, until the pid is reaped.
pub unsafe fn start(job: &mut Prepared) -> std::io::Result<pid_t> {
    let shared = if sys::SHARED_MEMORY_SAFE {
        libc::CLONE_VM
    } else {
        0
    };
    // The supervisor starts with every signal blocked, so none is lost before it waits
    // for them (see `run_supervisor`).
    let mut all: libc::sigset_t = std::mem::zeroed();
    let mut was: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut was);
    let pid = libc::clone(
        supervisor_entry,
        job.memory.stacks.supervisor_top(),
        shared | libc::SIGCHLD,
        (job as *mut Prepared).cast(),
    );
    let err = std::io::Error::last_os_error();
    libc::pthread_sigmask(libc::SIG_SETMASK, &was, std::ptr::null_mut());
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

/// Tell the spawner why the command cannot start, and end.
unsafe fn cannot_start(status: c_int, errno: c_int) -> ! {
    sys::write(status, &errno.to_le_bytes());
    sys::exit(CANNOT_START)
}

extern "C" fn supervisor_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `start` passes its `Prepared`, which outlives this process.
    unsafe { supervise_prepared(&mut *arg.cast::<Prepared>()) }
}

unsafe fn supervise_prepared(job: &mut Prepared) -> ! {
    if let Err(e) = become_supervisor(job.spawner) {
        cannot_start(job.status, e);
    }
    // The runner signals the job's process group, which is the supervisor's.
    sys::setpgid_self();
    let made = job.cgroup.as_ref().map(|c| c.make());
    let command = Command {
        job,
        made,
        supervisor: sys::getpid(),
    };
    // CLONE_VFORK: this process waits until the command has exec'd or exited, so the
    // command may use this process's memory meanwhile.
    let leader = libc::clone(
        command_entry,
        job.memory.stacks.leader_top(),
        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        (&command as *const Command).cast_mut().cast(),
    );
    if leader < 0 {
        // glibc's clone reports through errno, which may be the spawner's here.
        cannot_start(job.status, libc::EAGAIN);
    }
    let cgroup = job.cgroup.as_ref().filter(|_| made == Some(0));
    run_supervisor(leader, job.grace_ms, &mut job.memory.table, cgroup)
}

/// What the command's clone reads.
struct Command<'a> {
    job: &'a Prepared,
    /// What `Cgroup::make` said, when the job has one.
    made: Option<c_int>,
    supervisor: pid_t,
}

extern "C" fn command_entry(arg: *mut c_void) -> c_int {
    // SAFETY: the supervisor passes its `Command` and waits (CLONE_VFORK) until this
    // process has exec'd or exited.
    unsafe { exec_command(&*arg.cast::<Command>()) }
}

unsafe fn exec_command(c: &Command) -> ! {
    let job = c.job;
    if let Err(e) = become_command(c.supervisor) {
        cannot_start(job.status, e);
    }
    let [stdin, stdout, stderr] = job.stdio;
    for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        if fd >= 0 {
            let r = sys::dup_onto(fd, target);
            if r < 0 {
                cannot_start(job.status, -r as c_int);
            }
        }
    }
    if let (Some(cgroup), Some(made)) = (&job.cgroup, c.made) {
        cgroup.enter(made);
    }
    if let Some(dir) = &job.workdir {
        let r = sys::chdir(dir);
        if r < 0 {
            cannot_start(job.status, -r as c_int);
        }
    }
    // Rust ignores SIGPIPE; an ignored signal stays ignored across exec.
    sys::default_action(libc::SIGPIPE);
    sys::set_signal_mask(0);
    // As execvp tries PATH: on to the next entry unless the error says the file is there.
    let mut denied = false;
    let mut last = libc::ENOENT;
    for program in &job.programs {
        let e = -sys::execve(program.as_ptr(), job.argv.as_ptr(), job.env.as_ptr()) as c_int;
        match e {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            e => cannot_start(job.status, e),
        }
        last = e;
    }
    cannot_start(job.status, if denied { libc::EACCES } else { last })
}

/// In a new supervisor: it stops its job when its parent dies (kill -9, OOM), as a cancel
/// does, and orphans of the job are re-parented to it. Err: the errno.
unsafe fn become_supervisor(parent: pid_t) -> Result<(), c_int> {
    for (option, arg) in [
        (libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong),
        (libc::PR_SET_CHILD_SUBREAPER, 1),
    ] {
        let r = sys::prctl(option, arg);
        if r < 0 {
            return Err(-r as c_int);
        }
    }
    if sys::getppid() != parent {
        // Its parent died before the parent-death signal was set.
        return Err(libc::ESRCH);
    }
    Ok(())
}

/// In a new command before its exec: it dies with its supervisor.
unsafe fn become_command(supervisor: pid_t) -> Result<(), c_int> {
    let r = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    if r < 0 {
        return Err(-r as c_int);
    }
    if sys::getppid() != supervisor {
        sys::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Forked from the daemon by std's Command

/// Run the command of `cmd` under a supervisor; `grace` is between SIGTERM and SIGKILL;
/// `cgroup`, the job's own cgroup when it gets one (created by the supervisor). The child
/// the runner gets (and signals) is the supervisor.
pub fn supervise(cmd: &mut tokio::process::Command, grace: Duration, cgroup: Option<&Path>) {
    use std::os::unix::process::CommandExt;
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut table: Vec<(i32, i32)> = Vec::with_capacity(TABLE);
    let cgroup = cgroup.and_then(Cgroup::new);
    let daemon = std::process::id() as pid_t;
    // SAFETY: the closure runs between fork and exec; `split` only makes
    // async-signal-safe calls and never allocates (`table` has its capacity already,
    // the cgroup's paths are built).
    unsafe {
        cmd.as_std_mut()
            .pre_exec(move || split(daemon, grace_ms, &mut table, cgroup.as_ref()));
    }
}

/// In std's forked child: become the supervisor and fork the command, which returns to
/// std to be exec'd. Never returns in the supervisor.
unsafe fn split(
    daemon: pid_t,
    grace_ms: i64,
    table: &mut Vec<(i32, i32)>,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<()> {
    // Every signal is blocked from before the fork, so none is lost before the supervisor
    // waits for them with sigtimedwait (the daemon's handlers are still installed here).
    sys::set_signal_mask(!0);
    become_supervisor(daemon).map_err(std::io::Error::from_raw_os_error)?;
    let supervisor = sys::getpid();
    let made = cgroup.map(|c| c.make());
    let leader = libc::fork();
    if leader < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if leader == 0 {
        // The command: it dies with its supervisor, and starts with no signal blocked
        // (a mask survives exec, and a shell that inherits a blocked SIGCHLD waits for
        // ever in `wait`).
        become_command(supervisor).map_err(std::io::Error::from_raw_os_error)?;
        if let (Some(c), Some(made)) = (cgroup, made) {
            c.enter(made);
        }
        sys::set_signal_mask(0);
        return Ok(());
    }
    run_supervisor(leader, grace_ms, table, cgroup.filter(|_| made == Some(0)))
}

// ---------------------------------------------------------------------------------------
// The supervisor

/// Everything of the job: the supervisor's descendants, and the cgroup's members.
unsafe fn stop_all(me: pid_t, sig: c_int, table: &mut Vec<(i32, i32)>, cgroup: Option<&Cgroup>) {
    if let Some(c) = cgroup {
        c.signal(sig);
    }
    signal_descendants(me, sig, table);
}

/// How long after the SIGKILLs began the supervisor still waits for a cgroup whose last
/// members are not its descendants (moved in from outside) before it exits anyway.
const CGROUP_GIVE_UP_MS: i64 = 5_000;

unsafe fn run_supervisor(
    leader: pid_t,
    grace_ms: i64,
    table: &mut Vec<(i32, i32)>,
    cgroup: Option<&Cgroup>,
) -> ! {
    // The command has its own copies of the pipes (and of the status pipe); ours would
    // keep the runner waiting for EOF.
    if !sys::close_all() {
        for fd in 0..1024 {
            sys::close(fd);
        }
    }
    // Children must stay waitable whatever the daemon set for SIGCHLD.
    sys::default_action(libc::SIGCHLD);
    let wanted = sys::sig(libc::SIGCHLD)
        | sys::sig(libc::SIGTERM)
        | sys::sig(libc::SIGINT)
        | sys::sig(libc::SIGHUP);
    let me = sys::getpid();
    let mut leader_status: Option<c_int> = None;
    let mut deadline: Option<i64> = None;
    loop {
        let mut children_left = true;
        loop {
            let mut st: c_int = 0;
            let r = sys::reap_any(&mut st);
            if r > 0 {
                if r == leader as isize {
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
            let empty = cgroup.is_none_or(|c| !c.populated());
            let give_up = deadline
                .is_some_and(|d| sys::monotonic_ms() >= d.saturating_add(CGROUP_GIVE_UP_MS));
            if empty || give_up {
                if let Some(c) = cgroup {
                    // Before the job is recorded; a cgroup the command made inside it
                    // keeps it (the daemon removes it at its next start).
                    sys::rmdir(&c.dir);
                }
                exit_like(st);
            }
        }
        if leader_status.is_some() && deadline.is_none() {
            // The command is done; what it left behind is stopped before the job ends.
            stop_all(me, libc::SIGTERM, table, cgroup);
            deadline = Some(sys::monotonic_ms().saturating_add(grace_ms));
        }
        let wait_ms = match deadline {
            Some(d) if sys::monotonic_ms() >= d => {
                stop_all(me, libc::SIGKILL, table, cgroup);
                KILL_EVERY_MS
            }
            Some(d) => (d - sys::monotonic_ms()).max(1),
            None => 60_000,
        };
        let sig = sys::wait_signal(wanted, wait_ms) as c_int;
        if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) && deadline.is_none() {
            stop_all(me, libc::SIGTERM, table, cgroup);
            deadline = Some(sys::monotonic_ms().saturating_add(grace_ms));
        }
    }
}

/// Exit with the command's wait status: its code, or death by its signal (without a core).
unsafe fn exit_like(status: c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        sys::no_core_dumps();
        sys::default_action(sig);
        sys::kill(sys::getpid(), sig);
        sys::set_signal_mask(!sys::sig(sig));
        sys::exit(128 + sig);
    }
    sys::exit(libc::WEXITSTATUS(status))
}

/// Send `sig` to every descendant of `me` (children of children too, whatever their
/// session or group), found in `/proc`.
unsafe fn signal_descendants(me: pid_t, sig: c_int, table: &mut Vec<(i32, i32)>) {
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
            sys::kill(pid, sig);
        }
    }
}

/// Fill `table` with (pid, parent pid) of the processes in `/proc`, up to its capacity.
unsafe fn read_proc(table: &mut Vec<(i32, i32)>) {
    let proc_fd = sys::open(
        c"/proc",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if proc_fd < 0 {
        return;
    }
    let proc_fd = proc_fd as c_int;
    let mut buf = [0u8; 8192];
    'dir: loop {
        let n = sys::getdents64(proc_fd, &mut buf);
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
    sys::close(proc_fd);
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
unsafe fn parent_of(proc_fd: c_int, name: &[u8]) -> Option<i32> {
    let mut path = [0u8; 32];
    let digits = name.iter().take_while(|&&b| b != 0).count();
    if digits + 6 > path.len() {
        return None;
    }
    path[..digits].copy_from_slice(&name[..digits]);
    path[digits..digits + 5].copy_from_slice(b"/stat");
    let fd = sys::openat(
        proc_fd,
        path.as_ptr().cast(),
        libc::O_RDONLY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return None;
    }
    let mut stat = [0u8; 1024];
    let n = sys::read(fd as c_int, &mut stat);
    sys::close(fd as c_int);
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
