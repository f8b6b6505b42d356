//! Pieces shared by the benchmarks: environment knobs, bench daemons with a log file, machine
//! CPU ticks, medians. The process guard, the anchor finder, free ports and the message
//! builders are the tests' (`tests/support/`), included here so both use one of each.
//! Included with `#[path]`, so cargo does not build it as a bench of its own.
#![allow(dead_code)]

#[path = "../../tests/support/anchor.rs"]
pub mod anchor;
#[path = "../../tests/support/child.rs"]
pub mod child;
#[path = "../../tests/support/messages.rs"]
pub mod messages;
#[path = "../../tests/support/net.rs"]
pub mod net;
#[path = "../../tests/support/rabbitmq.rs"]
pub mod rabbitmq;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use child::ChildGuard;
use hark::event::keys::{write_keypair, KeyMetadata, SigningKey};

/// Key id of the benches' publisher, trusted by their relay and daemons.
pub const PUBLISHER: &str = "bench";
/// Key id and name of the benches' `hark relay`.
pub const RELAY_NAME: &str = "bench-relay";

/// The hark binary under test: `$HARK_BIN`, else the one cargo built for this bench. Exits
/// the bench with advice when it does not exist.
pub fn bench_hark_bin() -> PathBuf {
    let bin = std::env::var_os("HARK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hark")));
    if !bin.is_file() {
        exit_with(&format!(
            "{} does not exist (cargo builds it for `cargo bench`; or set HARK_BIN)",
            bin.display()
        ));
    }
    bin
}

/// End the bench with an error: set-up problems are reported, never a panic.
pub fn exit_with(why: &str) -> ! {
    eprintln!("error: {why}");
    std::process::exit(1);
}

/// utime + stime in ticks from the part of a `/proc/.../stat` line after the `(comm)`.
pub fn stat_ticks(after_comm: &str) -> u64 {
    let rest: Vec<&str> = after_comm.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    [11, 12]
        .iter()
        .filter_map(|&i| rest.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// CPU time of a process so far (`pid` a number, or `self`), in nanoseconds: 10 ms ticks,
/// threads that have exited included; 0 if it cannot be read.
pub fn process_cpu_ns(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .map_or(0, |c| stat_ticks(&stat[c + 1..]) * 10_000_000)
}

/// (own, reaped children) CPU seconds of a process so far: utime+stime and cutime+cstime
/// from `/proc/PID/stat` (10 ms ticks; threads that have exited included).
pub fn process_cpu_secs(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<u64> = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14–17.
    let tick = |i: usize| rest.get(i).copied().unwrap_or(0) as f64 / 100.0;
    Some((tick(11) + tick(12), tick(13) + tick(14)))
}

/// (own, reaped children) CPU seconds of a process and its live descendants: hark's
/// trigger forks its jobs from a spawner process of its own, whose work (and whose reaped
/// jobs) would otherwise only show once it exits.
pub fn tree_cpu_secs(pid: u32) -> Option<(f64, f64)> {
    let (mut own, mut reaped) = process_cpu_secs(pid)?;
    let mut parents = vec![pid];
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Field 4, the parent, follows the state after the `(comm)`.
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    while let Some(parent) = parents.pop() {
        for &(child, _) in all.iter().filter(|(_, pp)| *pp == parent) {
            if let Some((o, r)) = process_cpu_secs(child) {
                own += o;
                reaped += r;
            }
            parents.push(child);
        }
    }
    Some((own, reaped))
}

/// The 1-minute load average; 0 if unknown.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Nearest-rank percentile of unsorted samples.
pub fn percentile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Per-round ratios a ÷ b (the rounds where both are positive) and their median, for a
/// report: `1.02×, 0.98× (median **1.00×**)`; `None` without any.
pub fn ratios_text(pairs: impl IntoIterator<Item = (Option<f64>, Option<f64>)>) -> Option<String> {
    let v: Vec<f64> = pairs
        .into_iter()
        .filter_map(|(a, b)| a.zip(b))
        .filter(|(a, b)| *a > 0.0 && *b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    let shown: Vec<String> = v.iter().map(|r| format!("{r:.2}×")).collect();
    median(v).map(|m| format!("{} (median **{m:.2}×**)", shown.join(", ")))
}

/// The report's line on the machine's load over the runs: 1-minute load averages and the
/// share of the machine that was busy, ranges and medians.
pub fn load_line(loads: &[f64], busy: &[f64]) -> Option<String> {
    let range = |v: &[f64]| {
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
            median(v.to_vec()).unwrap_or(0.0),
        )
    };
    (!loads.is_empty()).then(|| {
        let (l0, l1, lm) = range(loads);
        let (b0, b1, bm) = range(busy);
        format!(
            "machine load during the runs: 1-minute load average {l0:.1}–{l1:.1} (median {lm:.1}); whole machine {b0:.0}–{b1:.0} % busy (median {bm:.0} %)"
        )
    })
}

/// The cases the bench's positional arguments select by key prefix (`lat`, `burst-hark`);
/// all of them without any.
pub fn selected<T: Copy>(all: &[T], key: impl Fn(T) -> &'static str) -> Vec<T> {
    let selectors: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<T> = all
        .iter()
        .copied()
        .filter(|&c| selectors.iter().any(|s| key(c).starts_with(s.as_str())))
        .collect();
    if chosen.is_empty() {
        all.to_vec()
    } else {
        chosen
    }
}

/// Delete an SQLite file and its WAL and shared-memory files, so a run starts afresh.
pub fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Nanoseconds this thread has been on a CPU (`/proc/thread-self/schedstat`); 0 if unknown.
pub fn thread_self_cpu() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// `r` rounded, with thousands separators: `12,345`.
pub fn thousands(r: f64) -> String {
    let s = (r.round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("warning: {name}={v:?} is not a number, using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// Run a short command and return its stdout, or `None` if it failed or took too long.
/// Its output must fit the pipe: it is read once the command has exited.
pub fn command_output(mut cmd: Command, limit: Duration) -> Option<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut guard = ChildGuard::spawn("command", &mut cmd).ok()?;
    let status = guard.wait_exit(limit).ok()?;
    let mut out = String::new();
    if let Some(stdout) = guard.take_stdout() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    status.success().then_some(out)
}

/// (busy, total) jiffies of the whole machine, from the first line of /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// A bench daemon whose stdout and stderr go to one log file, stopped by its [`ChildGuard`]
/// when dropped.
pub struct LoggedChild {
    guard: ChildGuard,
    log: PathBuf,
}

impl LoggedChild {
    pub fn spawn(mut cmd: Command, log: PathBuf, what: &str) -> Result<LoggedChild, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let guard = ChildGuard::spawn(what, &mut cmd)?;
        Ok(LoggedChild { guard, log })
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Stop it with SIGTERM, killing it if it has not exited within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.guard.terminate(timeout)
    }

    /// What the child is, as the reports name it.
    pub fn what(&self) -> &str {
        self.guard.name()
    }

    /// `None` while running, else why it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.guard.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); its output ends with:\n{}",
                self.what(),
                self.log_tail(15)
            )),
            Err(e) => Some(format!("{}: {e}", self.guard.name())),
        }
    }

    /// The last `lines` lines of the log, indented for a report.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Bounded wait for a line of the child's output that contains `needle`.
    pub fn wait_for_output(&mut self, needle: &str, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(why) = self.exited() {
                return Err(why);
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "{} did not print {needle:?} within {limit:?}; its output ends with:\n{}",
                    self.what(),
                    self.log_tail(15)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `venv`'s Python and the versions of `packages` (and libzmq) in it, for the report.
pub fn anchor_versions(venv: &Path, packages: &[&str]) -> Option<String> {
    let list = packages
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args([
        "-c",
        &format!(
            "import importlib.metadata as m, sys, zmq\n\
             print('Python', sys.version.split()[0], *(p + ' ' + m.version(p) for p in \
             [{list}]), 'libzmq', zmq.zmq_version())"
        ),
    ]);
    command_output(cmd, Duration::from_secs(20)).map(|s| s.trim().to_string())
}

/// The lines of the report's machine section that every bench has: CPUs, kernel, load.
pub fn machine_lines() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    vec![
        format!(
            "CPUs: {} × {model}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        format!("kernel: {}", read("/proc/sys/kernel/osrelease")),
        format!("load average at start: {}", read("/proc/loadavg")),
    ]
}

/// Keys of a bench run, written below a run directory: [`PUBLISHER`]'s and [`RELAY_NAME`]'s.
pub struct BenchKeys {
    /// Directory of trusted public keys: the publisher's.
    pub trusted: PathBuf,
    /// The relay's secret key file.
    pub relay_key: PathBuf,
    /// The publisher's signing key, for building signed load.
    pub publisher: SigningKey,
}

/// Make the publisher's key (trusted) and the relay's in `publisher/`, `trusted/` and
/// `relay/` below `dir`.
pub fn bench_keys(dir: &Path) -> Result<BenchKeys, String> {
    let (publisher, relay) = (PUBLISHER, RELAY_NAME);
    let sub = |name: &str| -> Result<PathBuf, String> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(d)
    };
    let (pubdir, trusted, relaydir) = (sub("publisher")?, sub("trusted")?, sub("relay")?);
    let meta = |id: &str| KeyMetadata {
        id: id.into(),
        ..KeyMetadata::default()
    };
    let publisher_key = SigningKey::generate(publisher);
    let (public, _) =
        write_keypair(&pubdir, &meta(publisher), &publisher_key).map_err(|e| e.to_string())?;
    std::fs::copy(&public, trusted.join(format!("{publisher}.key"))).map_err(|e| e.to_string())?;
    let relay_signing = SigningKey::generate(relay);
    let (_, relay_key) =
        write_keypair(&relaydir, &meta(relay), &relay_signing).map_err(|e| e.to_string())?;
    Ok(BenchKeys {
        trusted,
        relay_key,
        publisher: publisher_key,
    })
}

impl BenchKeys {
    /// `hark relay` with these keys, `config`, and the publisher granted `_lk.bench.**`,
    /// logging warnings only.
    pub fn relay_command(
        &self,
        hark_bin: &Path,
        config: &Path,
        submit: &str,
        publish: &str,
    ) -> Command {
        let mut cmd = Command::new(hark_bin);
        cmd.arg("relay")
            .arg("--config")
            .arg(config)
            .args(["--submit", submit, "--publish", publish])
            .arg("--key")
            .arg(&self.relay_key)
            .arg("--trusted")
            .arg(&self.trusted)
            .args(["--grant", &format!("{PUBLISHER}=_lk.bench.**")])
            .args(["--name", RELAY_NAME])
            .env("HARK_LOG", "warn")
            .env_remove("JOURNAL_STREAM");
        cmd
    }
}
