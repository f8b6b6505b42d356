//! Shared helpers for integration tests: free loopback ports, the `hark` binary, child
//! processes that die with the test, and bounded waits for readiness lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A `hark` command with quiet, colourless logs.
pub fn hark() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hark"));
    c.env("HARK_LOG", "info").env_remove("JOURNAL_STREAM");
    c
}

/// A child process killed when the guard drops; its stderr lines are collected.
pub struct ChildGuard {
    child: Option<Child>,
    pub stderr_lines: mpsc::Receiver<String>,
}

impl ChildGuard {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Wait for exit (bounded) and collect stdout; stderr is what was not yet read.
    pub fn wait_output(&mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("child already waited for");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let mut out = child.wait_with_output().expect("wait");
        let rest: Vec<String> = self.stderr_lines.try_iter().collect();
        out.stderr = rest.join("\n").into_bytes();
        out
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }
}

fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawn `cmd` and wait (at most 20 s) until its stderr shows `needle`.
pub fn spawn_ready(cmd: &mut Command, needle: &str) -> ChildGuard {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hark");
    let stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    let guard = ChildGuard {
        child: Some(child),
        stderr_lines: rx,
    };
    std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match guard.stderr_lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return guard,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!(
        "{needle:?} never appeared on stderr; saw:\n{}",
        seen.join("\n")
    );
}
