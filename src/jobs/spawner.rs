//! The job spawner: a small process of its own, started once by `hark trigger`, that starts
//! every job's supervisor (`contain.rs`), so the daemon itself never forks per job.
//!
//! Why: forking the daemon copies its page tables and write-protects every page it owns,
//! and the daemon then takes a copy-on-write fault on each page it writes next: that was
//! most of the daemon's CPU per job (docs/benchmarks.md). The spawner is the `hark` binary
//! exec'd afresh (`/proc/self/exe`), single-threaded, a few pages of heap, and it forks
//! nothing either: a supervisor is a `clone(CLONE_VM)` sharing its memory, whose command
//! is a vfork-style clone that execs (`contain::start`). So no page table is copied and no
//! page is copy-on-write, and the spawner does not wait for an exec: it takes the next
//! request while the last command is still starting, and answers each when its exec has
//! happened (or failed).
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair (one message per request or reply):
//! - daemon → spawner: a spawn request (a tag, the grace period, argv, environment,
//!   working directory, the job's cgroup if it gets one) with the job's stdin, stdout
//!   and stderr pipe ends as `SCM_RIGHTS`;
//! - spawner → daemon: `spawned` (tag, supervisor pid) once the command has exec'd, or
//!   `failed` (tag, the error text: what std's `Command` would say), later `exited` (tag,
//!   the supervisor's wait status, which is the command's).
//!
//! Lifetimes: the spawner's parent-death signal is SIGKILL and it exits when the socket
//! closes, so it never outlives the daemon; each supervisor's parent-death signal (SIGTERM)
//! then stops its job, as when the daemon forked them itself. The spawner runs in a process
//! group of its own: a Ctrl-C at the daemon's terminal does not reach it (KillMode=mixed
//! does not either), so a draining daemon keeps its jobs.
//!
//! Whenever the spawner cannot take a job (it is gone, the request is larger than one
//! message), the runner forks the supervisor from the daemon as before: slower, the same
//! containment.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt as _;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::error;

use super::contain;

/// `hark __job-spawner`: the hidden first argument `main` looks for.
pub const ARG: &str = "__job-spawner";

/// Largest request: what one datagram of the socket takes (larger ones are forked from
/// the daemon instead).
const MAX_REQUEST: usize = 192 * 1024;
const REPLY_SPAWNED: u8 = 1;
const REPLY_FAILED: u8 = 2;
const REPLY_EXITED: u8 = 3;

// ---------------------------------------------------------------------------------------
// The daemon's side

/// What a runner waits on.
struct Waiting {
    spawned: Option<oneshot::Sender<Result<u32, String>>>,
    exited: Option<oneshot::Sender<i32>>,
}

/// The daemon's handle on its spawner, shared by every runner task.
pub struct Spawner {
    sock: AsyncFd<OwnedFd>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiting>>,
    gone: AtomicBool,
}

/// Why a job was not handed to the spawner; the runner then forks the supervisor itself.
#[derive(Debug)]
pub enum Unavailable {
    /// The spawner is gone, or the request does not fit one message.
    Fallback,
    /// The spawner ran it and std could not start it (missing program, bad workdir...).
    Failed(String),
}

/// A command running under a supervisor the spawner forked.
pub struct Spawned {
    pub pid: u32,
    exited: oneshot::Receiver<i32>,
    status: Option<io::Result<std::process::ExitStatus>>,
}

impl Spawned {
    /// The supervisor's (so the command's) exit status; may be awaited again after a
    /// `select!` dropped an earlier wait.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        if self.status.is_none() {
            let got = (&mut self.exited).await;
            self.status = Some(
                got.map(std::process::ExitStatus::from_raw)
                    .map_err(|_| io::Error::other("the job spawner exited before the job ended")),
            );
        }
        match self.status.as_ref() {
            Some(Ok(s)) => Ok(*s),
            Some(Err(e)) => Err(io::Error::other(e.to_string())),
            None => Err(io::Error::other("no status")),
        }
    }
}

/// The pipe ends the command gets.
pub struct ChildFds {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Spawner {
    /// Start the spawner. Call on a thread that lives as long as the daemon (its
    /// parent-death signal follows the thread that forked it), inside the tokio runtime
    /// (for the socket's reactor), before the daemon is busy (the one fork of the daemon).
    pub fn start() -> io::Result<Arc<Spawner>> {
        Spawner::start_exe(std::path::Path::new("/proc/self/exe"))
    }

    /// [`Spawner::start`] with the `hark` binary at `exe` (tests start one from theirs).
    pub fn start_exe(exe: &std::path::Path) -> io::Result<Arc<Spawner>> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(io::Error::from)?;
        set_buffer(&ours, (MAX_REQUEST * 2) as libc::c_int);
        // Blocking on the spawner's side: its loop polls.
        set_blocking(&theirs)?;
        let daemon = std::process::id() as libc::pid_t;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(ARG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe; nothing allocates.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != daemon {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Reaped when it ends, by a thread that does nothing else.
        std::thread::Builder::new()
            .name("job-spawner-reaper".into())
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    if !status.success() {
                        error!("the job spawner ended ({status}); jobs are forked from the daemon from now on");
                    }
                }
            })?;
        let spawner = Arc::new(Spawner {
            // SAFETY: an OwnedFd keeps its descriptor open and the same until dropped.
            sock: unsafe { AsyncFd::register(ours) }.map_err(io::Error::from)?,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            gone: AtomicBool::new(false),
        });
        let reader = spawner.clone();
        tokio::spawn(async move { reader.read_replies().await });
        Ok(spawner)
    }

    /// Hand a job to the spawner; returns once its supervisor runs (or could not start).
    pub async fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        workdir: Option<&std::path::Path>,
        cgroup: Option<&std::path::Path>,
        grace: Duration,
        fds: ChildFds,
    ) -> Result<Spawned, Unavailable> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(Unavailable::Fallback);
        }
        let tag = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(request) =
            encode_request(tag, argv, env, workdir, cgroup, grace, fds.stdin.is_some())
        else {
            return Err(Unavailable::Fallback);
        };
        let (spawned_tx, spawned_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(
                tag,
                Waiting {
                    spawned: Some(spawned_tx),
                    exited: Some(exited_tx),
                },
            );
        }
        let mut raw: Vec<RawFd> = Vec::with_capacity(3);
        if let Some(fd) = &fds.stdin {
            raw.push(fd.as_raw_fd());
        }
        raw.push(fds.stdout.as_raw_fd());
        raw.push(fds.stderr.as_raw_fd());
        let sent = loop {
            let mut guard = match self.sock.writable().await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let iov = [IoSlice::new(&request)];
            match guard.try_io(|s| {
                sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => break r,
                Err(_would_block) => continue,
            }
        };
        // The spawner holds its own copies now.
        drop(fds);
        if let Err(e) = sent {
            self.forget(tag);
            if e.raw_os_error() != Some(libc::EMSGSIZE) {
                self.lost(&format!("cannot send it a job: {e}"));
            }
            return Err(Unavailable::Fallback);
        }
        match spawned_rx.await {
            Ok(Ok(pid)) => Ok(Spawned {
                pid,
                exited: exited_rx,
                status: None,
            }),
            Ok(Err(message)) => Err(Unavailable::Failed(message)),
            // Gone before it answered: nothing of the job runs (its supervisor, if any,
            // got its parent-death signal).
            Err(_) => Err(Unavailable::Fallback),
        }
    }

    fn forget(&self, tag: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&tag);
        }
    }

    /// The spawner is gone: every waiter learns it, later jobs are forked from here.
    fn lost(&self, why: &str) {
        if !self.gone.swap(true, Ordering::Relaxed) {
            error!("job spawner: {why}; jobs are forked from the daemon from now on");
        }
        if let Ok(mut w) = self.waiting.lock() {
            w.clear();
        }
    }

    /// Hang up on the spawner as a daemon that exits does: it exits, and its jobs'
    /// supervisors stop them (their parent-death signal). For tests: a daemon that goes
    /// away does this by itself.
    pub fn hang_up(&self) -> io::Result<()> {
        nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both)
            .map_err(io::Error::from)
    }

    async fn read_replies(&self) {
        let mut buf = vec![0u8; 8192];
        loop {
            let mut guard = match self.sock.readable().await {
                Ok(g) => g,
                Err(e) => return self.lost(&format!("cannot read from it: {e}")),
            };
            let got = guard.try_io(|s| {
                let mut iov = [IoSliceMut::new(&mut buf)];
                recvmsg::<()>(s.as_raw_fd(), &mut iov, None, MsgFlags::empty())
                    .map(|m| m.bytes)
                    .map_err(io::Error::from)
            });
            let n = match got {
                Err(_would_block) => continue,
                Ok(Err(e)) => return self.lost(&format!("cannot read from it: {e}")),
                Ok(Ok(0)) => return self.lost("it exited"),
                Ok(Ok(n)) => n,
            };
            self.reply(&buf[..n]);
        }
    }

    fn reply(&self, msg: &[u8]) {
        if msg.len() < 17 {
            return;
        }
        let tag = u64::from_le_bytes(msg[1..9].try_into().unwrap_or_default());
        let value = i64::from_le_bytes(msg[9..17].try_into().unwrap_or_default());
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        match msg[0] {
            REPLY_SPAWNED => {
                if let Some(tx) = waiting.get_mut(&tag).and_then(|w| w.spawned.take()) {
                    let _ = tx.send(Ok(value as u32));
                }
            }
            REPLY_FAILED => {
                if let Some(w) = waiting.remove(&tag) {
                    if let Some(tx) = w.spawned {
                        let text = String::from_utf8_lossy(&msg[17..]).into_owned();
                        let _ = tx.send(Err(text));
                    }
                }
            }
            REPLY_EXITED => {
                if let Some(tx) = waiting.remove(&tag).and_then(|w| w.exited) {
                    let _ = tx.send(value as i32);
                }
            }
            _ => {}
        }
    }
}

fn set_buffer(fd: &OwnedFd, bytes: libc::c_int) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads the int it is given; a refusal leaves the default.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The wire format: little-endian integers, NUL-terminated strings (which is what exec
// takes, so a string with a NUL in it could not run anyway: such a job is forked from the
// daemon, where std reports it).

fn encode_request(
    tag: u64,
    argv: &[String],
    env: &[(String, String)],
    workdir: Option<&std::path::Path>,
    cgroup: Option<&std::path::Path>,
    grace: Duration,
    stdin: bool,
) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&tag.to_le_bytes());
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    out.extend_from_slice(&grace_ms.to_le_bytes());
    out.push(u8::from(stdin));
    let put = |out: &mut Vec<u8>, s: &[u8]| -> Option<()> {
        if s.contains(&0) {
            return None;
        }
        out.extend_from_slice(s);
        out.push(0);
        Some(())
    };
    put(
        &mut out,
        workdir
            .map(|d| d.as_os_str().as_bytes())
            .unwrap_or_default(),
    )?;
    put(
        &mut out,
        cgroup.map(|d| d.as_os_str().as_bytes()).unwrap_or_default(),
    )?;
    out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    for a in argv {
        put(&mut out, a.as_bytes())?;
    }
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    for (k, v) in env {
        put(&mut out, k.as_bytes())?;
        put(&mut out, v.as_bytes())?;
    }
    (out.len() <= MAX_REQUEST).then_some(out)
}

struct Request<'a> {
    tag: u64,
    grace: Duration,
    stdin: bool,
    workdir: &'a [u8],
    /// Empty: no cgroup of its own.
    cgroup: &'a [u8],
    argv: Vec<&'a [u8]>,
    env: Vec<(&'a [u8], &'a [u8])>,
}

fn decode_request(buf: &[u8]) -> Option<Request<'_>> {
    let mut at = 0usize;
    let mut int = |n: usize| -> Option<&[u8]> {
        let s = buf.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let tag = u64::from_le_bytes(int(8)?.try_into().ok()?);
    let grace = Duration::from_millis(u64::from_le_bytes(int(8)?.try_into().ok()?));
    let stdin = int(1)?[0] != 0;
    let mut rest = &buf[at..];
    fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = rest.iter().position(|&b| b == 0)?;
        let s = &rest[..end];
        *rest = &rest[end + 1..];
        Some(s)
    }
    let count = |rest: &mut &[u8]| -> Option<usize> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        *rest = &rest[4..];
        Some(n)
    };
    let workdir = string(&mut rest)?;
    let cgroup = string(&mut rest)?;
    let argc = count(&mut rest)?;
    let mut argv = Vec::with_capacity(argc.min(4096));
    for _ in 0..argc {
        argv.push(string(&mut rest)?);
    }
    let envc = count(&mut rest)?;
    let mut env = Vec::with_capacity(envc.min(4096));
    for _ in 0..envc {
        let k = string(&mut rest)?;
        let v = string(&mut rest)?;
        env.push((k, v));
    }
    Some(Request {
        tag,
        grace,
        stdin,
        workdir,
        cgroup,
        argv,
        env,
    })
}

fn encode_reply(kind: u8, tag: u64, value: i64, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + text.len());
    out.push(kind);
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// The spawner's side

/// In `main`, before anything else: when started as the spawner, serve and return its
/// exit code; otherwise `None`.
pub fn main_if_spawner() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    args.next();
    if args.next()? != ARG {
        return None;
    }
    Some(match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hark: job spawner: {e}");
            ExitCode::FAILURE
        }
    })
}

fn serve() -> io::Result<()> {
    // The socket came as stdin; keep it out of the commands' way (close-on-exec, not 0).
    // SAFETY: fd 0 is ours; F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let sock = unsafe {
        let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // A command without stdin gets this /dev/null (fd 0 is not close-on-exec).
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto our own stdin.
    unsafe { libc::dup2(null.as_raw_fd(), 0) };
    drop(null);
    let sigchld = child_signals()?;
    // Never dropped: the supervisors run on stacks it owns, in memory they share with the
    // spawner (CLONE_VM), and still run after it returns (a daemon killed with -9 closes
    // the socket before the spawner's own parent-death signal comes). Freed with the
    // memory, once the last of them is gone.
    let mut jobs = std::mem::ManuallyDrop::new(Jobs {
        running: HashMap::new(),
        starting: Vec::new(),
        spare: Vec::new(),
        inherited: std::env::vars_os()
            .map(|(k, v)| {
                let var = variable(k.as_bytes(), v.as_bytes());
                (k.into_vec(), var)
            })
            .collect(),
    });
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    let mut polled: Vec<libc::pollfd> = Vec::new();
    let mut ready: Vec<libc::pid_t> = Vec::new();
    loop {
        polled.clear();
        let watched = [sock.as_raw_fd(), sigchld.as_raw_fd()].into_iter();
        let statuses = jobs.starting.iter().map(|(_, status)| status.as_raw_fd());
        polled.extend(watched.chain(statuses).map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: poll over the descriptors above.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        ready.clear();
        ready.extend(
            polled[2..]
                .iter()
                .zip(&jobs.starting)
                .filter(|(p, _)| p.revents != 0)
                .map(|(_, (pid, _))| *pid),
        );
        for &pid in &ready {
            jobs.started(&sock, pid)?;
        }
        if polled[1].revents != 0 {
            drain_signals(&sigchld);
            jobs.reap(&sock)?;
        }
        if polled[0].revents & libc::POLLIN != 0 {
            if !take_request(&sock, &mut buf, &mut jobs)? {
                return Ok(());
            }
        } else if polled[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // The daemon is gone; the supervisors' parent-death signal stops the jobs.
            return Ok(());
        }
    }
}

/// A supervisor the spawner started and has not reaped yet.
struct Running {
    tag: u64,
    /// What the supervisor and its command read: kept in place until it is reaped.
    job: Box<contain::Prepared>,
}

struct Jobs {
    running: HashMap<libc::pid_t, Running>,
    /// The status pipes of the supervisors whose command has not exec'd yet (end of file)
    /// nor said why it cannot start (its errno).
    starting: Vec<(libc::pid_t, OwnedFd)>,
    /// Stacks and process tables of reaped supervisors, for the next ones.
    spare: Vec<contain::Memory>,
    /// The environment every command starts from (the daemon's, as the spawner got it):
    /// each name, and its `name=value` that commands' environments point to.
    inherited: Vec<(Vec<u8>, CString)>,
}

/// How many reaped supervisors' memory the spawner keeps (each about 450 KiB of address
/// space: two stacks and a process table, of which only what a supervisor touched is
/// resident).
const SPARE: usize = 64;

impl Jobs {
    /// The status pipe of `pid` has something: tell the daemon whether its command runs.
    fn started(&mut self, sock: &OwnedFd, pid: libc::pid_t) -> io::Result<()> {
        let Some(at) = self.starting.iter().position(|(p, _)| *p == pid) else {
            return Ok(());
        };
        let (_, status) = self.starting.swap_remove(at);
        let Some(job) = self.running.get(&pid) else {
            return Ok(());
        };
        let mut errno = [0u8; 4];
        // SAFETY: a read into our buffer; the pipe is readable (or closed) by now.
        let n = unsafe { libc::read(status.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        let reply = if n == 4 {
            let e = io::Error::from_raw_os_error(i32::from_le_bytes(errno));
            encode_reply(REPLY_FAILED, job.tag, 0, &e.to_string())
        } else {
            encode_reply(REPLY_SPAWNED, job.tag, i64::from(pid), "")
        };
        send(sock, &reply)
    }

    fn reap(&mut self, sock: &OwnedFd) -> io::Result<()> {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes the status it is given.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return Ok(());
            }
            // Its command exec'd or failed before it ended: that answer comes first.
            self.started(sock, pid)?;
            if let Some(job) = self.running.remove(&pid) {
                if self.spare.len() < SPARE {
                    self.spare.push(job.job.into_memory());
                }
                send(
                    sock,
                    &encode_reply(REPLY_EXITED, job.tag, i64::from(status), ""),
                )?;
            }
        }
    }

    /// Start the supervisor of one request.
    fn start(&mut self, req: &Request<'_>, fds: Vec<OwnedFd>) -> io::Result<libc::pid_t> {
        let Some(program) = req.argv.first() else {
            return Err(io::Error::other("job spawner: empty command"));
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let stdio = match (req.stdin, &raw[..]) {
            (true, &[i, o, e]) => [i, o, e],
            (false, &[o, e]) => [-1, o, e],
            _ => return Err(io::Error::other("job spawner: wrong number of descriptors")),
        };
        let env = self.environment(&req.env);
        let path = match req.env.iter().rev().find(|(k, _)| *k == b"PATH") {
            Some((_, v)) => Some(*v),
            None => self
                .inherited
                .iter()
                .find(|(name, _)| name == b"PATH")
                .and_then(|(_, var)| var.to_bytes().strip_prefix(b"PATH=")),
        };
        let programs = candidates(program, path);
        let argv = req.argv.iter().map(|a| cstring(a)).collect::<Vec<_>>();
        let workdir = (!req.workdir.is_empty()).then(|| cstring(req.workdir));
        let cgroup =
            (!req.cgroup.is_empty()).then(|| std::path::Path::new(OsStr::from_bytes(req.cgroup)));
        let (status_r, status_w) = status_pipe()?;
        let memory = match self.spare.pop() {
            Some(m) => m,
            None => contain::Memory::new()?,
        };
        let mut job = Box::new(contain::Prepared::new(
            programs,
            argv,
            env,
            workdir,
            stdio,
            status_w.as_raw_fd(),
            req.grace,
            cgroup,
            memory,
        ));
        // SAFETY: the spawner is single-threaded, and `job` stays in `running`, untouched,
        // until its supervisor is reaped.
        let pid = unsafe { contain::start(&mut job) }?;
        // The supervisor has its own copies of these now.
        drop((fds, status_w));
        self.starting.push((pid, status_r));
        self.running.insert(pid, Running { tag: req.tag, job });
        Ok(pid)
    }

    /// The request's variables over the inherited ones, as std's `Command::envs` does:
    /// the request's (the last of a name wins), and the inherited ones it does not set,
    /// which are made once, when the spawner starts.
    fn environment(&self, set: &[(&[u8], &[u8])]) -> contain::Environment {
        let own = set
            .iter()
            .enumerate()
            .filter(|&(i, (k, _))| !set[i + 1..].iter().any(|(later, _)| later == k))
            .map(|(_, (k, v))| variable(k, v))
            .collect();
        let kept = self
            .inherited
            .iter()
            .filter(|(name, _)| !set.iter().any(|(k, _)| *k == &name[..]))
            .map(|(_, var)| var.as_ptr())
            .collect();
        contain::Environment { own, kept }
    }
}

/// Strings from the wire have no NUL (decode_request splits at them).
fn cstring(s: &[u8]) -> CString {
    CString::new(s).unwrap_or_default()
}

fn variable(k: &[u8], v: &[u8]) -> CString {
    let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
    kv.extend_from_slice(k);
    kv.push(b'=');
    kv.extend_from_slice(v);
    CString::new(kv).unwrap_or_default()
}

/// The paths an exec of `program` tries, in order, as execvp does: the program itself
/// when it names a path, else each entry of `PATH` (an empty one is the working directory;
/// no `PATH` at all is execvp's `/bin:/usr/bin`).
fn candidates(program: &[u8], path: Option<&[u8]>) -> Vec<CString> {
    if program.contains(&b'/') {
        return vec![cstring(program)];
    }
    path.unwrap_or(b"/bin:/usr/bin")
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let mut p = Vec::with_capacity(dir.len() + program.len() + 1);
            p.extend_from_slice(dir);
            p.push(b'/');
            p.extend_from_slice(program);
            cstring(&p)
        })
        .collect()
}

/// A close-on-exec pipe: the command's exec closes its end, the spawner reads the other.
fn status_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A signalfd for SIGCHLD (blocked, so it is only read there).
fn child_signals() -> io::Result<OwnedFd> {
    // SAFETY: plain signal-mask and signalfd calls on a sigset we own. Every command
    // starts with no signal blocked (contain.rs), so none inherits the block.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn drain_signals(fd: &OwnedFd) {
    let mut info = [0u8; 128 * 8];
    // SAFETY: reads into our buffer until the nonblocking signalfd is empty.
    while unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
}

fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    let iov = [IoSlice::new(msg)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
        .map(drop)
        .map_err(io::Error::from)
}

/// Read one request and start it; false once the daemon has closed the socket. The
/// `spawned` (or `failed`) answer comes when its command has exec'd (or could not).
fn take_request(sock: &OwnedFd, buf: &mut [u8], jobs: &mut Jobs) -> io::Result<bool> {
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if n == 0 {
        return Ok(false);
    }
    let Some(req) = decode_request(&buf[..n]).filter(|_| !truncated) else {
        let tag = buf
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        send(
            sock,
            &encode_reply(REPLY_FAILED, tag, 0, "job spawner: malformed request"),
        )?;
        return Ok(true);
    };
    if let Err(e) = jobs.start(&req, fds) {
        send(
            sock,
            &encode_reply(REPLY_FAILED, req.tag, 0, &e.to_string()),
        )?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_nul_bytes_are_refused() {
        let argv = vec!["/bin/echo".to_string(), "a b".to_string(), String::new()];
        let env = vec![("HARK_JOB".to_string(), "7".to_string())];
        let dir = std::path::Path::new("/tmp");
        let cg = std::path::Path::new("/sys/fs/cgroup/x/job-9");
        let buf = encode_request(
            9,
            &argv,
            &env,
            Some(dir),
            Some(cg),
            Duration::from_millis(1500),
            true,
        )
        .expect("encodes");
        let req = decode_request(&buf).expect("decodes");
        assert_eq!(req.tag, 9);
        assert_eq!(req.grace, Duration::from_millis(1500));
        assert!(req.stdin);
        assert_eq!(req.workdir, b"/tmp");
        assert_eq!(req.cgroup, b"/sys/fs/cgroup/x/job-9");
        assert_eq!(req.argv, [&b"/bin/echo"[..], b"a b", b""]);
        assert_eq!(req.env, [(&b"HARK_JOB"[..], &b"7"[..])]);
        let bad = vec!["/bin/echo".to_string(), "a\0b".to_string()];
        assert!(encode_request(1, &bad, &env, None, None, Duration::ZERO, false).is_none());
        let none =
            encode_request(1, &argv, &env, None, None, Duration::ZERO, false).expect("encodes");
        assert_eq!(decode_request(&none).expect("decodes").cgroup, b"");
        assert!(decode_request(&buf[..buf.len() - 1]).is_none(), "truncated");
        let huge = vec!["x".repeat(MAX_REQUEST)];
        assert!(encode_request(1, &huge, &[], None, None, Duration::ZERO, false).is_none());
    }
}
