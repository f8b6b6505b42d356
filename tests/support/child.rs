//! The one guard for child processes in tests and benches: a `Child` that is stopped by PID
//! (SIGKILL) and reaped when the guard drops, with every wait bounded so a stuck child fails
//! a run instead of hanging it. How output is captured is the caller's business (tests read
//! pipes line by line, benches write a log file); this file owns only the process itself.
//!
//! Included with `#[path]` from `tests/common/mod.rs` and `benches/support/mod.rs`.
#![allow(dead_code)]

use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a drop waits for a SIGKILLed child to be reaped. SIGKILL cannot be caught, so
/// this only runs out for a child stuck in the kernel; leaving a zombie then beats hanging.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// A child process that is killed and reaped when the guard drops.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Spawn `cmd` as configured by the caller (stdio included).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<ChildGuard, String> {
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout pipe, if it was piped and not taken yet.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stderr pipe, if it was piped and not taken yet.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Exit status if the child has exited (and is reaped), `Ok(None)` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Exit status if the child has exited (and is reaped), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.try_wait().ok().flatten()
    }

    /// Wait for the child to exit, at most `timeout` (polling); kill it on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("{} did not exit within {timeout:?}", self.name));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the child (SIGKILL) and reap it, waiting at most [`REAP_LIMIT`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let deadline = Instant::now() + REAP_LIMIT;
        while self.try_status().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ask the child to stop with SIGTERM, then wait up to `timeout` before killing it.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        self.wait_exit(timeout).ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill();
        }
    }
}
