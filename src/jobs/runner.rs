//! Running one job's command, watchexec-style: the event on stdin, `HARK_*` in the
//! environment, and a timeout that sends SIGTERM to everything the command started, waits
//! a grace period, then sends SIGKILL. The command runs under a per-job supervisor
//! (`contain.rs`) that nothing it starts escapes (`setsid` included), in a cgroup of its
//! own when systemd delegates the daemon's cgroup (`cgroup.rs`), and that stops what
//! is left when the command exits, so a job is recorded only once none of its processes
//! runs. stdout and stderr are logged line by line with the rule and job id, capped per
//! job; the tail is kept for the job store.
//!
//! A rule with `run.unit` runs as a transient systemd unit instead (`unit.rs`), with the
//! same output handling.
//!
//! Never a shell: `argv[0]` is executed directly. A rule that wants a shell says so and the
//! renderer puts `/bin/sh -c` in front itself.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

pub use super::launch::{Spec, Stdin};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Success,
    /// A non-zero exit code, or death by a signal it did not get from us.
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Killed by us after `timeout`.
    TimedOut,
    /// Stopped by us on request (cancel, supersede, shutdown).
    Cancelled,
    /// Could not be started at all (missing program, bad workdir...).
    SpawnFailed(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::SpawnFailed(_) => "failed",
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Success => Some(0),
            Outcome::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub output_tail: String,
    pub output_bytes: u64,
    pub duration: Duration,
}

/// Output accounting shared by the stdout and stderr readers.
pub(super) struct Sink {
    logged: usize,
    total: u64,
    cap_noted: bool,
    tail: VecDeque<u8>,
    log_limit: usize,
    tail_limit: usize,
    live: Option<super::live::LiveLog>,
}

impl Sink {
    pub(super) fn for_spec(spec: &Spec) -> Sink {
        Sink {
            logged: 0,
            total: 0,
            cap_noted: false,
            tail: VecDeque::new(),
            log_limit: spec.log_limit,
            tail_limit: spec.tail_limit,
            live: spec.live_log.clone().map(super::live::LiveLog::new),
        }
    }

    fn line(&mut self, spec_rule: &str, job: i64, stream: &str, line: &[u8]) {
        self.total += line.len() as u64 + 1;
        self.tail.extend(line);
        self.tail.push_back(b'\n');
        while self.tail.len() > self.tail_limit {
            self.tail.pop_front();
        }
        if self.logged < self.log_limit {
            self.logged += line.len() + 1;
            if let Some(e) = self.live.as_mut().and_then(|l| l.line(line)) {
                warn!(
                    rule = spec_rule,
                    job, "no live output for `hark jobs log`: {e}"
                );
            }
            info!(
                rule = spec_rule,
                job,
                stream,
                "{}",
                String::from_utf8_lossy(line)
            );
        } else if !self.cap_noted {
            self.cap_noted = true;
            if let Some(live) = &mut self.live {
                let note = format!(
                    "[hark: output exceeds {} bytes; the rest is not shown]",
                    self.log_limit
                );
                // A file that could not be made was reported with the first line.
                let _ = live.line(note.as_bytes());
            }
            warn!(
                rule = spec_rule,
                job,
                "output exceeds {} bytes; no longer logging it (the tail is kept with the job)",
                self.log_limit
            );
        }
    }
}

/// Longest line logged as one; longer lines are split so a flood without newlines cannot
/// grow memory.
const MAX_LINE: usize = 8192;

pub(super) async fn pump(
    mut reader: impl AsyncRead + Unpin,
    sink: Arc<Mutex<Sink>>,
    rule: String,
    job: i64,
    stream: &'static str,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        if let Ok(mut s) = sink.lock() {
            s.line(&rule, job, stream, line);
        }
        line.clear();
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else {
                line.push(b);
                if line.len() >= MAX_LINE {
                    emit(&mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

fn signal_group(pgid: Option<u32>, signal: Signal) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (the group is already gone) is the good case.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

fn signal_one(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// Sends SIGTERM to the supervisor of a run that is dropped before it ended; the
/// supervisor then stops the job as on a cancel.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        signal_one(self.0, Signal::SIGTERM);
    }
}

pub(super) async fn cancelled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            // The scheduler dropped the sender: nobody can cancel us any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Run `spec` to completion. Setting `cancel` to true stops it (TERM, grace, KILL).
pub async fn run(spec: Spec, cancel: watch::Receiver<bool>) -> Finished {
    run_with(spec, cancel, None).await
}

/// A started command: its supervisor's pid, pipes and exit status, whoever forked it.
struct Child {
    pid: Option<u32>,
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    exit: Exit,
}

enum Exit {
    /// Forked from the daemon (tokio reaps it).
    Local(tokio::process::Child),
    /// Forked by the job spawner, which reports its status.
    Spawned(super::spawner::Spawned),
}

impl Child {
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match &mut self.exit {
            Exit::Local(c) => c.wait().await,
            Exit::Spawned(s) => s.wait().await,
        }
    }
}

/// Start the supervisor through the spawner when there is one and it takes the job,
/// else fork it from here.
async fn start(
    spec: &Spec,
    program: &str,
    args: &[String],
    cgroup: Option<&std::path::Path>,
    spawner: Option<&super::spawner::Spawner>,
) -> std::io::Result<Child> {
    if let Some(spawner) = spawner {
        if let Some(child) = start_spawned(spec, cgroup, spawner).await? {
            return Ok(child);
        }
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_null() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    // The child is the job's supervisor; if the daemon dies (kill -9, OOM), its parent-death
    // signal stops the job rather than leaving it running unsupervised while the restarted
    // daemon runs the same job again.
    super::contain::supervise(&mut cmd, spec.grace, cgroup);
    let mut child = cmd.spawn()?;
    Ok(Child {
        pid: child.id(),
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
        stdout: child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        stderr: child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        exit: Exit::Local(child),
    })
}

/// `None`: the spawner cannot take this job; fork it here.
async fn start_spawned(
    spec: &Spec,
    cgroup: Option<&std::path::Path>,
    spawner: &super::spawner::Spawner,
) -> std::io::Result<Option<Child>> {
    use super::spawner::{ChildFds, Unavailable};
    use std::os::fd::OwnedFd;
    use tokio::net::unix::pipe;
    let stdin = match spec.stdin.is_null() {
        true => None,
        false => Some(std::io::pipe()?),
    };
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    let (stdin_r, stdin_w) = match stdin {
        Some((r, w)) => (Some(OwnedFd::from(r)), Some(w)),
        None => (None, None),
    };
    let fds = ChildFds {
        stdin: stdin_r,
        stdout: out_w.into(),
        stderr: err_w.into(),
    };
    let spawned = match spawner
        .spawn(
            &spec.argv,
            &spec.env,
            spec.workdir.as_deref(),
            cgroup,
            spec.grace,
            fds,
        )
        .await
    {
        Ok(s) => s,
        Err(Unavailable::Fallback) => return Ok(None),
        Err(Unavailable::Failed(message)) => return Err(std::io::Error::other(message)),
    };
    let stdin =
        match stdin_w {
            Some(w) => Some(Box::new(pipe::Sender::from_owned_fd(w.into())?)
                as Box<dyn AsyncWrite + Send + Unpin>),
            None => None,
        };
    Ok(Some(Child {
        pid: Some(spawned.pid),
        stdin,
        stdout: Some(Box::new(pipe::Receiver::from_owned_fd(out_r.into())?)),
        stderr: Some(Box::new(pipe::Receiver::from_owned_fd(err_r.into())?)),
        exit: Exit::Spawned(spawned),
    }))
}

/// [`run`], with the supervisor forked by the job spawner when there is one.
pub async fn run_with(
    spec: Spec,
    mut cancel: watch::Receiver<bool>,
    spawner: Option<Arc<super::spawner::Spawner>>,
) -> Finished {
    let started = Instant::now();
    let Some((program, args)) = spec.argv.split_first() else {
        return Finished {
            outcome: Outcome::SpawnFailed("empty command".into()),
            output_tail: String::new(),
            output_bytes: 0,
            duration: Duration::ZERO,
        };
    };
    if spec.unit.is_some() {
        return super::unit::run(spec, cancel).await;
    }
    // Under systemd with a delegated cgroup, the job's own (cgroup.rs).
    let cgroup = super::cgroup::job_dir(spec.job);
    let mut child = match start(&spec, program, args, cgroup.as_deref(), spawner.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            let where_ = spec
                .workdir
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            return Finished {
                outcome: Outcome::SpawnFailed(format!("cannot run {program}{where_}: {e}")),
                output_tail: String::new(),
                output_bytes: 0,
                duration: started.elapsed(),
            };
        }
    };
    let pgid = child.pid;
    // A run dropped before its end (runtime shutdown) still stops the whole job.
    let mut guard = StopOnDrop(pgid);
    if let Some(mut stdin) = child.stdin.take() {
        let input = spec.stdin.clone();
        tokio::spawn(async move {
            // A command that does not read stdin closes it early; EPIPE is not an error.
            let _ = stdin.write_all(&input.bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let sink = Arc::new(Mutex::new(Sink::for_spec(&spec)));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            out,
            sink.clone(),
            spec.rule.clone(),
            spec.job,
            "stdout",
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            err,
            sink.clone(),
            spec.rule.clone(),
            spec.job,
            "stderr",
        )));
    }

    let timeout = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum Stop {
        Exited(std::io::Result<std::process::ExitStatus>),
        TimedOut,
        Cancelled,
    }
    let stop = tokio::select! {
        status = child.wait() => Stop::Exited(status),
        _ = timeout => Stop::TimedOut,
        _ = cancelled(&mut cancel) => Stop::Cancelled,
    };
    let outcome = match stop {
        Stop::Exited(status) => match status {
            Ok(s) if s.success() => Outcome::Success,
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                Outcome::Failed {
                    code: s.code(),
                    signal: s.signal(),
                }
            }
            Err(e) => {
                warn!(rule = %spec.rule, job = spec.job, "waiting for the command failed: {e}");
                Outcome::Failed {
                    code: None,
                    signal: None,
                }
            }
        },
        Stop::TimedOut | Stop::Cancelled => {
            let outcome = if matches!(stop, Stop::TimedOut) {
                Outcome::TimedOut
            } else {
                Outcome::Cancelled
            };
            // The supervisor sends TERM to everything, waits the grace period and KILLs
            // what is left; should it not be done by then, the group gets KILL from here.
            signal_one(pgid, Signal::SIGTERM);
            let margin = spec.grace + Duration::from_secs(5);
            if tokio::time::timeout(margin, child.wait()).await.is_err() {
                warn!(rule = %spec.rule, job = spec.job, "the job's supervisor did not stop in time; killing its group");
                signal_group(pgid, Signal::SIGKILL);
                let _ = child.wait().await;
                if let Some(dir) = cgroup.clone() {
                    // The supervisor did not get to empty and remove it.
                    let removed = tokio::task::spawn_blocking(move || super::cgroup::remove(&dir));
                    if let Ok(Err(e)) = removed.await {
                        warn!(rule = %spec.rule, job = spec.job, "cannot remove the job's cgroup: {e}");
                    }
                }
            }
            outcome
        }
    };
    guard.0 = None;
    // Grandchildren that kept our pipes open would hold the readers forever.
    let drain = futures_join(&mut readers);
    if tokio::time::timeout(spec.grace.max(Duration::from_millis(200)), drain)
        .await
        .is_err()
    {
        signal_group(pgid, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(1), futures_join(&mut readers)).await;
        for r in &readers {
            r.abort();
        }
    }
    let (output_tail, output_bytes) = collect(&sink);
    Finished {
        outcome,
        output_tail,
        output_bytes,
        duration: started.elapsed(),
    }
}

/// The output tail and the byte count once the readers are done.
pub(super) fn collect(sink: &Mutex<Sink>) -> (String, u64) {
    match sink.lock() {
        Ok(s) => (
            String::from_utf8_lossy(&s.tail.iter().copied().collect::<Vec<u8>>()).into_owned(),
            s.total,
        ),
        Err(_) => (String::new(), 0),
    }
}

/// Wait up to `bound` for the readers to reach EOF, then stop waiting for them.
pub(super) async fn drain(readers: &mut [tokio::task::JoinHandle<()>], bound: Duration) {
    if tokio::time::timeout(bound, futures_join(readers))
        .await
        .is_err()
    {
        for r in readers.iter() {
            r.abort();
        }
    }
}

async fn futures_join(readers: &mut [tokio::task::JoinHandle<()>]) {
    for r in readers.iter_mut() {
        if !r.is_finished() {
            let _ = r.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("HARK_RULE".into(), "r".into())],
            workdir: None,
            stdin: Stdin::Null,
            timeout: Some(Duration::from_secs(10)),
            grace: Duration::from_millis(300),
            log_limit: 1 << 20,
            tail_limit: 4096,
            rule: "r".into(),
            job: 1,
            unit: None,
            live_log: None,
            origin: None,
        }
    }

    fn no_cancel() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    #[tokio::test]
    async fn stdin_env_and_exit_code() {
        let mut s = spec(&["/bin/sh", "-c", "cat; echo \"rule=$HARK_RULE\"; exit 3"]);
        s.stdin = Stdin::Bytes(b"{\"a\":1}\n".to_vec());
        let f = run(s, no_cancel()).await;
        assert_eq!(
            f.outcome,
            Outcome::Failed {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(f.output_tail, "{\"a\":1}\nrule=r\n");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_failure() {
        let f = run(spec(&["/nonexistent/prog"]), no_cancel()).await;
        assert!(matches!(&f.outcome, Outcome::SpawnFailed(m) if m.contains("/nonexistent/prog")));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_including_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        // The grandchild ignores TERM, so only the group KILL after the grace period stops it.
        let script = format!(
            "(trap '' TERM; sleep 60 & echo $! > {}; wait) & sleep 60",
            pidfile.display()
        );
        let mut s = spec(&["/bin/sh", "-c", &script]);
        s.timeout = Some(Duration::from_millis(300));
        let f = run(s, no_cancel()).await;
        assert_eq!(f.outcome, Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped by init once killed; give it a moment, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z"),
            "grandchild {pid} still alive: {stat}"
        );
    }

    /// A script in `dir` (so tests need no nested shell quoting) and the path of the pid
    /// file it is given as `$1`.
    fn script(dir: &std::path::Path, name: &str, body: &str) -> (String, std::path::PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (path.display().to_string(), dir.join(format!("{name}.pid")))
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// Not even a zombie: the supervisor reaped it before the run ended.
    fn assert_gone(pid: i32, what: &str) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty(),
            "{what} {pid} still there when the job ended: {stat}"
        );
    }

    #[tokio::test]
    async fn a_daemonized_grandchild_that_closed_its_pipes_is_gone_when_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        // Double fork + setsid, stdio to /dev/null: the classic daemon, which a process
        // group and a wait for the leader both miss.
        let (daemon, pidfile) = script(
            dir.path(),
            "daemon",
            "echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 60",
        );
        let body = format!(
            "(setsid {daemon} {pid} </dev/null >/dev/null 2>&1 &)\n\
             while [ ! -s {pid} ]; do sleep 0.01; done\necho leader done",
            pid = pidfile.display()
        );
        let (leader, _) = script(dir.path(), "leader", &body);
        let f = run(spec(&["/bin/sh", &leader]), no_cancel()).await;
        assert_eq!(f.outcome, Outcome::Success, "{}", f.output_tail);
        assert_eq!(f.output_tail, "leader done\n");
        assert_gone(read_pid(&pidfile), "daemonized grandchild");
    }

    #[tokio::test]
    async fn timeout_kills_a_setsid_grandchild_that_ignores_term() {
        let dir = tempfile::tempdir().unwrap();
        let (escaper, pidfile) = script(
            dir.path(),
            "escaper",
            "trap '' TERM\necho $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"\nwhile :; do sleep 1; done",
        );
        let body = format!("setsid {escaper} {} &\nsleep 60", pidfile.display());
        let (leader, _) = script(dir.path(), "leader", &body);
        let mut s = spec(&["/bin/sh", &leader]);
        s.timeout = Some(Duration::from_millis(500));
        let started = Instant::now();
        let f = run(s, no_cancel()).await;
        assert_eq!(f.outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_gone(read_pid(&pidfile), "setsid grandchild");
    }

    #[tokio::test]
    async fn cancel_stops_a_setsid_grandchild_too() {
        let dir = tempfile::tempdir().unwrap();
        let (escaper, pidfile) = script(
            dir.path(),
            "escaper",
            "echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 60",
        );
        let body = format!("setsid {escaper} {} &\nsleep 60", pidfile.display());
        let (leader, _) = script(dir.path(), "leader", &body);
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(run(spec(&["/bin/sh", &leader]), rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pidfile.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = read_pid(&pidfile);
        tx.send(true).unwrap();
        let f = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.outcome, Outcome::Cancelled);
        assert_gone(pid, "setsid grandchild");
    }

    #[tokio::test]
    async fn leftovers_get_term_then_kill_after_the_grace_and_the_status_is_the_commands() {
        let dir = tempfile::tempdir().unwrap();
        // A child that ignores TERM and still holds stdout when the leader exits 4.
        let (stubborn, pidfile) = script(
            dir.path(),
            "stubborn",
            "trap '' TERM\necho $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"\nwhile :; do sleep 1; done",
        );
        let body = format!(
            "{stubborn} {pid} &\nwhile [ ! -s {pid} ]; do sleep 0.01; done\nexit 4",
            pid = pidfile.display()
        );
        let (leader, _) = script(dir.path(), "leader", &body);
        let started = Instant::now();
        let f = run(spec(&["/bin/sh", &leader]), no_cancel()).await;
        assert_eq!(
            f.outcome,
            Outcome::Failed {
                code: Some(4),
                signal: None
            }
        );
        // spec() has a 300 ms grace: the leftover got it before the KILL.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_gone(read_pid(&pidfile), "leftover child");
    }

    #[tokio::test]
    async fn a_command_killed_by_a_signal_is_reported_with_that_signal() {
        let f = run(spec(&["/bin/sh", "-c", "kill -USR1 $$"]), no_cancel()).await;
        assert_eq!(
            f.outcome,
            Outcome::Failed {
                code: None,
                signal: Some(libc_sigusr1())
            }
        );
    }

    fn libc_sigusr1() -> i32 {
        nix::libc::SIGUSR1
    }

    #[tokio::test]
    async fn cancel_stops_the_run() {
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(run(spec(&["/bin/sleep", "30"]), rx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
        let f = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.outcome, Outcome::Cancelled);
    }

    /// While the job runs its output is in the live file, line by line; when it has
    /// ended the file is gone (the store keeps the tail).
    #[tokio::test]
    async fn output_is_live_in_a_file_while_the_job_runs() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let live = tmp.path().join("out").join("1.log");
        let mut s = spec(&[
            "/bin/sh",
            "-c",
            "echo first; echo err >&2; while [ ! -e \"$1\" ]; do sleep 0.05; done; echo last",
            "sh",
        ]);
        let go = tmp.path().join("go");
        s.argv.push(go.display().to_string());
        s.live_log = Some(live.clone());
        let run = tokio::spawn(run(s, no_cancel()));
        let mut seen = String::new();
        for _ in 0..200 {
            seen = std::fs::read_to_string(&live).unwrap_or_default();
            if seen.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut lines: Vec<&str> = seen.lines().collect();
        lines.sort();
        assert_eq!(lines, ["err", "first"], "live output while running");
        std::fs::write(&go, "").expect("let it finish");
        let f = run.await.expect("no panic");
        assert_eq!(f.outcome, Outcome::Success, "{}", f.output_tail);
        assert!(f.output_tail.ends_with("last\n"), "{}", f.output_tail);
        assert!(!live.exists(), "the live file outlived its job");
    }

    #[tokio::test]
    async fn output_flood_is_capped_and_tail_kept() {
        let mut s = spec(&[
            "/bin/sh",
            "-c",
            "head -c 3000000 /dev/zero | tr '\\0' 'x'; echo; echo last-line",
        ]);
        s.log_limit = 10_000;
        let f = run(s, no_cancel()).await;
        assert_eq!(f.outcome, Outcome::Success);
        assert!(f.output_bytes > 3_000_000);
        assert!(f.output_tail.len() <= 4096);
        assert!(f.output_tail.ends_with("last-line\n"));
    }
}
