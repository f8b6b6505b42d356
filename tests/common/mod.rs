//! Shared helpers for hark's integration tests: free ports, temp dirs, the `hark` binary and
//! the venv Python, and child processes whose output is read line by line in background
//! threads so that every wait has a deadline.
//!
//! Use from a test file with `mod common;`. Every line a child prints is echoed to the test's
//! captured stderr as `[name] line`, so a failing test shows the whole conversation.
//!
//! The process guard, the anchor finder, free ports and the message builders live in
//! `tests/support/`, shared with the benches; this file includes them and adds the panicking
//! forms tests want.
#![allow(dead_code)]

#[path = "../support/anchor.rs"]
pub mod anchor;
#[path = "../support/child.rs"]
pub mod child;
#[path = "../support/curl.rs"]
pub mod curl;
#[path = "../support/messages.rs"]
pub mod messages;
#[path = "../support/net.rs"]
pub mod net;
#[path = "../support/rabbitmq.rs"]
pub mod rabbitmq;

pub mod bus;

pub use child::ChildGuard;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port that was free a moment ago on 127.0.0.1; panics if there is none.
pub fn free_port() -> u16 {
    net::try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// `tcp://127.0.0.1:<free port>`; panics if there is none.
pub fn free_endpoint() -> String {
    net::try_free_endpoint().unwrap_or_else(|e| panic!("{e}"))
}

/// A signed Laniakea event with `data` and no origin host; panics if signing fails.
pub fn signed(
    key: &hark::event::keys::SigningKey,
    tag: &str,
    data: serde_json::Value,
) -> serde_json::Value {
    messages::signed_event(tag, data, key, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Sign an event with `key`, submit it to a relay and wait for its ack: its uuid.
pub fn publish_acked(
    submit_ep: &str,
    key: &hark::event::keys::SigningKey,
    tag: &str,
    data: serde_json::Value,
) -> String {
    let event = hark::bus::publish::build_event(tag, data, key, None, None).expect("build");
    let uuid = event["uuid"].as_str().expect("uuid").to_string();
    hark::bus::publish::submit(
        submit_ep,
        &event,
        Duration::from_secs(15),
        &hark::config::ZmqConfig::default(),
    )
    .expect("acked");
    uuid
}

/// `event` as the canonical JSON frame a DEALER submits.
pub fn event_bytes(event: &serde_json::Value) -> Vec<u8> {
    messages::event_frame(event).unwrap_or_else(|e| panic!("{e}"))
}

/// The `hark` binary cargo built for this test run.
pub fn hark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hark"))
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("hark-test-")
        .tempdir()
        .expect("create temp dir")
}

/// The venv Python with the test peers: `$HARK_TEST_PYTHON`, else `<repo>/.venv/bin/python`.
/// Panics with instructions when neither exists.
pub fn python() -> PathBuf {
    let candidate = match std::env::var_os("HARK_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv/bin/python"),
    };
    if !candidate.exists() {
        panic!(
            "the Python test peers are not installed ({} does not exist): \
             run `make venv` (or `make test`)",
            candidate.display()
        );
    }
    candidate
}

/// The Python anchor `program` (e.g. `fedmsg-relay`) in the venv of [`python`]. Panics with
/// advice when it is not installed there.
pub fn test_anchor(program: &str) -> PathBuf {
    let python = python();
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    anchor::find_anchor(&[venv], program)
        .map(|venv| venv.join("bin").join(program))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Path of a peer script in `tests/peers/`.
pub fn peer(script: &str) -> PathBuf {
    repo_root().join("tests/peers").join(script)
}

/// A `Command` running the peer `script` with the venv Python, unbuffered.
pub fn peer_command(script: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(peer(script))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// A `Command` for the `hark` binary, logging at debug level unless `HARK_LOG` is set.
/// It reads no configuration file unless the test passes `--config`: a host with the
/// package installed has /etc/hark/hark.yaml, whose journal and state file in
/// /var/lib/hark every test's relay would then share.
pub fn hark_command() -> Command {
    let mut cmd = Command::new(hark_bin());
    cmd.env("HARK_CONFIG", "/dev/null");
    if std::env::var_os("HARK_LOG").is_none() {
        cmd.env("HARK_LOG", "debug");
    }
    cmd
}

/// Lines read from a child's stdout or stderr by a background thread.
pub struct Lines {
    name: String,
    rx: Receiver<String>,
    history: Arc<Mutex<Vec<String>>>,
    /// Set by the reader at end of file.
    ended: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Lines {
    /// Start reading `stream` line by line. Lines are kept (see [`Lines::history`]) and echoed
    /// to the test's stderr prefixed with `[name]`.
    pub fn spawn<R: Read + Send + 'static>(name: &str, stream: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        let history = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (thread_name, thread_history) = (name.to_string(), Arc::clone(&history));
        let thread_ended = Arc::clone(&ended);
        thread::Builder::new()
            .name(format!("lines-{name}"))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    eprintln!("[{thread_name}] {line}");
                    thread_history.lock().unwrap().push(line.clone());
                    if tx.send(line).is_err() {
                        // Nobody listens any more; keep draining so the child never blocks.
                    }
                }
                let (flag, changed) = &*thread_ended;
                *flag.lock().unwrap() = true;
                changed.notify_all();
            })
            .expect("spawn reader thread");
        Lines {
            name: name.to_string(),
            rx,
            history,
            ended,
        }
    }

    /// Wait at most `timeout` until the stream has ended (every line is in the history);
    /// false if it has not (a grandchild may still hold it open).
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let (flag, changed) = &*self.ended;
        let guard = flag.lock().unwrap();
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |ended| !*ended)
            .unwrap();
        *guard
    }

    /// The next line not yet taken, waiting at most `timeout`. `None` on timeout or EOF.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Take lines until one contains `needle`; return it. Errors on timeout or EOF, quoting
    /// everything read so far.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "[{}] no line containing {needle:?} within {timeout:?}; got:\n{}",
                        self.name,
                        self.history().join("\n")
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "[{}] stream closed before a line containing {needle:?}; got:\n{}",
                        self.name,
                        self.history().join("\n")
                    ))
                }
            }
        }
    }

    /// Take `n` lines, waiting at most `timeout` for all of them.
    pub fn take(&self, n: usize, timeout: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(e) => {
                    return Err(format!(
                        "[{}] got {} of {n} lines within {timeout:?} ({e}):\n{}",
                        self.name,
                        out.len(),
                        self.history().join("\n")
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Take every remaining line until EOF, waiting at most `timeout` for EOF.
    pub fn drain(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => return out,
            }
        }
    }

    /// Every line read so far (taken or not).
    pub fn history(&self) -> Vec<String> {
        self.history.lock().unwrap().clone()
    }
}

/// Wait until `stream` prints a line containing `needle` (reading in a thread), at most
/// `timeout`. Returns the line, and the [`Lines`] to keep reading from.
pub fn wait_for_line<R: Read + Send + 'static>(
    stream: R,
    needle: &str,
    timeout: Duration,
) -> Result<(String, Lines), String> {
    let lines = Lines::spawn("stream", stream);
    let line = lines.wait_for(needle, timeout)?;
    Ok((line, lines))
}

/// A child process with line readers on stdout and stderr, killed when dropped (by its
/// [`ChildGuard`]).
pub struct Proc {
    pub name: String,
    guard: ChildGuard,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    /// Spawn `cmd` with stdin closed and stdout/stderr piped.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        Self::spawn_reading(name, cmd.stdin(Stdio::null())).0
    }

    /// Spawn `cmd` with stdin, stdout and stderr piped; the caller writes to its stdin.
    pub fn spawn_with_stdin(name: &str, cmd: &mut Command) -> (Proc, std::process::ChildStdin) {
        let (proc, stdin) = Self::spawn_reading(name, cmd.stdin(Stdio::piped()));
        (
            proc,
            stdin.unwrap_or_else(|| panic!("{name}: stdin was piped but is missing")),
        )
    }

    fn spawn_reading(name: &str, cmd: &mut Command) -> (Proc, Option<std::process::ChildStdin>) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn(name, cmd).unwrap_or_else(|e| panic!("{e}"));
        let (Some(out), Some(err)) = (guard.take_stdout(), guard.take_stderr()) else {
            panic!("{name}: stdout and stderr were piped but are missing");
        };
        let stdin = guard.take_stdin();
        let proc = Proc {
            name: name.to_string(),
            stdout: Lines::spawn(&format!("{name}:out"), out),
            stderr: Lines::spawn(&format!("{name}:err"), err),
            guard,
        };
        (proc, stdin)
    }

    pub fn id(&self) -> u32 {
        self.guard.id()
    }

    /// Exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.guard.try_status()
    }

    /// Wait for the child to exit, at most `timeout` (polling); kill it on timeout. Then
    /// wait (briefly) for the readers to reach the end of its output, so that the
    /// histories hold its last lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let status = self
            .guard
            .wait_exit(timeout)
            .map_err(|e| format!("{e}; stderr:\n{}", self.stderr.history().join("\n")))?;
        for lines in [&self.stdout, &self.stderr] {
            lines.wait_ended(Duration::from_secs(2));
        }
        Ok(status)
    }

    /// Wait for a successful exit within `timeout`; error (with stderr) otherwise.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<(), String> {
        let status = self.wait_exit(timeout)?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({status}); stderr:\n{}",
                self.name,
                self.stderr.history().join("\n")
            ))
        }
    }

    /// Kill the child (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Ask the child to stop with SIGTERM, then wait up to `timeout` before killing it.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.guard.terminate(timeout)
    }
}

/// Spawn `cmd` and wait (at most 30 s) until its stderr shows `ready`, e.g. `relay ready`.
pub fn spawn_ready(name: &str, cmd: &mut Command, ready: &str) -> Proc {
    let proc = Proc::spawn(name, cmd);
    proc.stderr
        .wait_for(ready, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    proc
}

/// Run `cmd` to completion within `timeout`; return its stdout lines. Errors include stderr.
pub fn run_ok(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Vec<String>, String> {
    let mut proc = Proc::spawn(name, cmd);
    proc.wait_success(timeout)?;
    Ok(proc.stdout.drain(Duration::from_secs(2)))
}

/// Poll `check` every 20 ms until it returns `Some`, at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Write `text` to `dir/name` and return the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent dir");
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The keys of a test bus under `dir`: a publisher `archive` and a relay key `relay`,
/// both public halves in `dir/trusted`.
pub struct TestKeys {
    pub trusted: PathBuf,
    pub archive: hark::event::keys::SigningKey,
    /// The relay's secret keyfile.
    pub relay_secret: PathBuf,
}

pub fn test_keys(dir: &Path) -> TestKeys {
    let trusted = dir.join("trusted");
    let relay_keys = dir.join("relay-keys");
    for d in [&trusted, &relay_keys] {
        std::fs::create_dir_all(d).expect("key directory");
    }
    let archive = keypair(&trusted, "archive");
    keypair(&relay_keys, "relay");
    std::fs::copy(relay_keys.join("relay.key"), trusted.join("relay.key"))
        .expect("trust the relay");
    TestKeys {
        trusted,
        archive,
        relay_secret: relay_keys.join("relay.key_secret"),
    }
}

/// A new Ed25519 key pair named `id`, written to `dir` as `id.key` and `id.key_secret`.
pub fn keypair(dir: &Path, id: &str) -> hark::event::keys::SigningKey {
    use hark::event::keys::{write_keypair, KeyMetadata, SigningKey};
    let key = SigningKey::generate(id);
    let meta = KeyMetadata {
        id: id.into(),
        ..Default::default()
    };
    write_keypair(dir, &meta, &key).expect("write keypair");
    key
}

/// A tmpfs mounted for the test, unmounted (lazily, if still busy) when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, or no mount permission).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let clean = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !clean {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Write to `path` until the file system says it is full.
pub fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}
