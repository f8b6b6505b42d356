//! Shared by the property tests (tests/prop_*.rs): the proptest configuration every one of
//! them runs with, and the long-lived reference process (tests/peers/reference.py: CPython's
//! json, python-signedjson, dpkg) that differential properties ask.
//!
//! Configuration: `PROPTEST_CASES` bounds the cases of every property (each test names its
//! own default, chosen so the whole set adds about a minute to `make test`); the RNG seed is
//! `PROPTEST_RNG_SEED` or a fresh one, printed first, so a failure in CI can be rerun as
//! `PROPTEST_RNG_SEED=N cargo test --test prop_x`. A failing case (shrunk) is saved to
//! `proptest-regressions/<test>.txt` and rerun first from then on; commit that file.
#![allow(dead_code)]

pub mod json_gen;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use serde_json::{json, Value};

/// The config for a property of test binary `test` (`prop_canonical`) with `cases` cases
/// unless `PROPTEST_CASES` says otherwise.
pub fn config(test: &'static str, cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let seed = *SEED.get_or_init(|| {
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                // Any varying number will do: the point is that it is printed.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32
            });
        eprintln!("proptest seed: {seed} (rerun with PROPTEST_RNG_SEED={seed})");
        seed
    });
    let path: &'static str = Box::leak(format!("proptest-regressions/{test}.txt").into_boxed_str());
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
        // Properties here are cheap per case; a failure shrinks within this many steps.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

static SEED: OnceLock<u64> = OnceLock::new();

/// The venv Python with the peers (`$HARK_TEST_PYTHON`, else `.venv/bin/python`), or the
/// reason it is missing.
fn python() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("HARK_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} does not exist: run `make venv`",
            candidate.display()
        ))
    }
}

/// One `tests/peers/reference.py` process, asked one line at a time.
pub struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start() -> Result<Self, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/reference.py");
        let mut child = Command::new(python()?)
            .arg("-u")
            .arg(script)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start tests/peers/reference.py: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut r = Reference {
            child,
            stdin,
            stdout,
        };
        // A first request proves the imports (signedjson) worked.
        r.ask(&json!({"op": "canon", "text": "[]"}))
            .map_err(|e| format!("tests/peers/reference.py does not answer: {e}"))?;
        Ok(r)
    }

    /// Ask one request; `Ok(answer)` or `Err(the reference's refusal)`. Panics when the
    /// process died (a broken reference must fail the test, not pass it).
    pub fn ask(&mut self, request: &Value) -> Result<Value, String> {
        let mut line = serde_json::to_string(request).expect("a request serializes");
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("reference.py is gone: {e}"));
        let mut reply = String::new();
        let n = self
            .stdout
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("reading reference.py: {e}"));
        assert!(
            n > 0,
            "reference.py exited (status {:?})",
            self.child.try_wait()
        );
        let mut reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("reference.py said {reply:?}: {e}"));
        if let Some(ok) = reply.get_mut("ok") {
            return Ok(ok.take());
        }
        match reply.get("err").and_then(Value::as_str) {
            Some(err) => Err(err.to_string()),
            None => panic!("reference.py answered {reply}"),
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static REFERENCE: OnceLock<Result<Mutex<Reference>, String>> = OnceLock::new();

/// The shared reference process, or why there is none (the caller prints SKIPPED).
pub fn reference() -> Result<std::sync::MutexGuard<'static, Reference>, String> {
    match REFERENCE.get_or_init(|| Reference::start().map(Mutex::new)) {
        Ok(m) => Ok(m.lock().unwrap_or_else(|p| p.into_inner())),
        Err(e) => Err(e.clone()),
    }
}

/// Prints `SKIPPED: test: why` and returns from the test when the reference cannot start.
#[macro_export]
macro_rules! skip_without_reference {
    ($test:literal) => {
        if let Err(why) = prop_support::reference().map(drop) {
            eprintln!("SKIPPED: {}: {why}", $test);
            return;
        }
    };
}
