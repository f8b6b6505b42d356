//! Trigger benchmark (`harness = false`): `cargo bench --bench trigger_latency`.
//!
//! Measures `hark trigger` next to Python's `fedmsg-trigger` (the anchor) in the same session
//! and prints the result as Markdown:
//!
//! - **latency**: events published at a steady rate (100/s for 10 s by default) to a rule
//!   whose command records the wall clock as the first thing it does
//!   (`bench/trigger/stamp`, a bash script: `$EPOCHREALTIME` is a builtin, no fork); the
//!   figure is command start minus the moment the generator sent the event, p50/p99/max;
//! - **burst**: N events (1000) published at once to a rule running `/bin/true`; the figure
//!   is commands per second, N ÷ (last command finished − first event sent), for hark's
//!   default concurrency (one run at a time, the realistic configuration) and a generous
//!   limit (100).
//!
//! hark is measured on two paths: **direct** (`hark trigger --fedmsg EP` subscribed to the
//! generator's PUB, fedmsg frames, no signatures: the same input as fedmsg-trigger's) and
//! **via relay** (signed Laniakea events → `hark relay` (verify, countersign) → `hark
//! trigger --connect` (verify again) → command). fedmsg-trigger subscribes to the same
//! generator PUB through `bench/trigger/fedmsg.d/trigger_bench.py` and runs the same stamp
//! script (or `/bin/true`) through its `echo '<json>' | COMMAND` bash line.
//!
//! Nothing here asserts a speed. Every wait is bounded, every child process is killed when
//! its guard drops, and a missing or broken Python anchor is reported, not fatal. Under
//! `cargo test --all-targets` (no `--bench` argument) this is a smoke test instead: a short
//! latency run on both hark paths and a small burst, failing only if a command did not run.
//! The method and the figures are explained in `docs/benchmarks.md`.
//!
//! Knobs (environment): `HARK_BENCH_RUNS` (5), `HARK_BENCH_RATE` (100 events/s),
//! `HARK_BENCH_LATENCY_SECS` (10), `HARK_BENCH_LATENCY_LIMIT` (100: the latency rule's
//! concurrency limit), `HARK_BENCH_BURST` (1000 events), `HARK_BENCH_BURST_LIMIT` (100: the
//! generous limit), `HARK_BENCH_SIZE` (500 bytes of JSON per event), `HARK_BENCH_RUN_TIMEOUT`
//! (120 s), `HARK_BENCH_IDLE_MS` (5000: a run ends after this long without a new command),
//! `HARK_BENCH_PYTHON_VENV` (else `.venv`, else `bench/.venv-anchor`), `HARK_BIN` (else the
//! `hark` binary cargo built for this bench), `HARK_BENCH_KEEP` (set: keep the run
//! directories with logs, job stores, `sent.txt` and `stamps.txt`, and print where).
//! Positional arguments select cases by key or key prefix: `lat`, `burst`, `lat-direct`,
//! `burst-fedmsg`, ... (see `Case::key`).

#[path = "support/mod.rs"]
mod support;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::anchor::{bench_venvs, find_anchor};
use support::messages::{epoch_secs, fedmsg_load, signed_load, Frames, Message};
use support::net::try_free_endpoint;
use support::{
    anchor_versions, bench_keys, command_output, env_num, exit_with, load_average, machine_lines,
    machine_ticks, median, percentile, process_cpu_secs, thousands, tree_cpu_secs, BenchKeys,
    LoggedChild, PUBLISHER,
};

const FEDMSG_PREFIX: &str = "org.fedoraproject.dev.bench.";
const LK_PREFIX: &str = "_lk.bench.";
/// How long a daemon may take to start and run a first warm-up command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends that block this long are an error, not a hang.
const SEND_TIMEOUT_MS: i32 = 5_000;
/// Pause between warm-up and load, so that the last warm-up commands are out of the way.
const SETTLE: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// Settings and cases

struct Settings {
    /// Run by `cargo test`: a quick correctness check, not a measurement.
    smoke: bool,
    runs: usize,
    rate: f64,
    latency_count: usize,
    latency_limit: u32,
    burst: usize,
    burst_limit: u32,
    size: usize,
    run_timeout: Duration,
    idle: Duration,
    cases: Vec<Case>,
    hark_bin: PathBuf,
    root: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let hark_bin = support::bench_hark_bin();
        // `cargo bench` passes --bench; `cargo test --all-targets` does not, and then this
        // is a smoke test: a short run of the hark cases, failing only if a command did not
        // run for an event (never on speed).
        let smoke = !std::env::args().any(|a| a == "--bench");
        if smoke {
            return Settings {
                smoke,
                runs: 1,
                rate: 100.0,
                latency_count: 100,
                latency_limit: 100,
                burst: 50,
                burst_limit: 100,
                size: 500,
                run_timeout: Duration::from_secs(60),
                idle: Duration::from_secs(5),
                cases: vec![
                    Case::new(Kind::Latency, Route::Direct, true),
                    Case::new(Kind::Latency, Route::Relay, true),
                    Case::new(Kind::Burst, Route::Direct, false),
                ],
                hark_bin,
                root,
            };
        }
        let selectors: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let mut cases: Vec<Case> = Case::ALL
            .into_iter()
            .filter(|c| selectors.iter().any(|s| c.key().starts_with(s.as_str())))
            .collect();
        if cases.is_empty() {
            cases = Case::ALL.to_vec();
        }
        let rate = env_num("HARK_BENCH_RATE", 100).max(1) as f64;
        let secs = env_num("HARK_BENCH_LATENCY_SECS", 10).max(1) as f64;
        Settings {
            smoke,
            runs: env_num("HARK_BENCH_RUNS", 5).max(1),
            rate,
            latency_count: (rate * secs).round() as usize,
            latency_limit: env_num("HARK_BENCH_LATENCY_LIMIT", 100).clamp(1, 10_000) as u32,
            burst: env_num("HARK_BENCH_BURST", 1000).max(1),
            burst_limit: env_num("HARK_BENCH_BURST_LIMIT", 100).clamp(1, 10_000) as u32,
            size: env_num("HARK_BENCH_SIZE", 500).max(300),
            run_timeout: Duration::from_secs(env_num("HARK_BENCH_RUN_TIMEOUT", 120).max(10) as u64),
            idle: Duration::from_millis(env_num("HARK_BENCH_IDLE_MS", 5000).max(500) as u64),
            cases,
            hark_bin,
            root,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Steady rate, publish → command start per event.
    Latency,
    /// N events at once, commands per second.
    Burst,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// fedmsg frames from the generator's PUB straight into `hark trigger --fedmsg`.
    Direct,
    /// Signed events: DEALER → `hark relay` → PUB → `hark trigger --connect`.
    Relay,
    /// fedmsg frames from the generator's PUB into Python's `fedmsg-trigger`.
    Fedmsg,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Case {
    kind: Kind,
    route: Route,
    /// The rule has a generous concurrency limit (else hark's default: one at a time).
    wide: bool,
}

impl Case {
    const fn new(kind: Kind, route: Route, wide: bool) -> Case {
        Case { kind, route, wide }
    }

    /// Run order within a round: each hark case next to the anchor, so that slow drifts of
    /// a noisy machine hit them alike.
    const ALL: [Case; 8] = [
        Case::new(Kind::Latency, Route::Direct, true),
        Case::new(Kind::Latency, Route::Fedmsg, false),
        Case::new(Kind::Latency, Route::Relay, true),
        Case::new(Kind::Burst, Route::Direct, false),
        Case::new(Kind::Burst, Route::Fedmsg, false),
        Case::new(Kind::Burst, Route::Direct, true),
        Case::new(Kind::Burst, Route::Relay, false),
        Case::new(Kind::Burst, Route::Relay, true),
    ];

    fn key(self) -> &'static str {
        match (self.kind, self.route, self.wide) {
            (Kind::Latency, Route::Direct, _) => "lat-direct",
            (Kind::Latency, Route::Relay, _) => "lat-relay",
            (Kind::Latency, Route::Fedmsg, _) => "lat-fedmsg",
            (Kind::Burst, Route::Direct, false) => "burst-direct-1",
            (Kind::Burst, Route::Direct, true) => "burst-direct-n",
            (Kind::Burst, Route::Relay, false) => "burst-relay-1",
            (Kind::Burst, Route::Relay, true) => "burst-relay-n",
            (Kind::Burst, Route::Fedmsg, _) => "burst-fedmsg",
        }
    }

    fn label(self, s: &Settings) -> String {
        let limit = |l: u32| {
            if l == 1 {
                "limit 1 (default)".to_string()
            } else {
                format!("limit {l}")
            }
        };
        match (self.kind, self.route) {
            (Kind::Latency, Route::Direct) => format!(
                "hark trigger, fedmsg frames direct, {}",
                limit(s.latency_limit)
            ),
            (Kind::Latency, Route::Relay) => format!(
                "hark relay → hark trigger, signed, {}",
                limit(s.latency_limit)
            ),
            (Kind::Burst, Route::Direct) => format!(
                "hark trigger, fedmsg frames direct, {}",
                limit(if self.wide { s.burst_limit } else { 1 })
            ),
            (Kind::Burst, Route::Relay) => format!(
                "hark relay → hark trigger, signed, {}",
                limit(if self.wide { s.burst_limit } else { 1 })
            ),
            (_, Route::Fedmsg) => "fedmsg-trigger (anchor), serial".to_string(),
        }
    }

    fn is_hark(self) -> bool {
        self.route != Route::Fedmsg
    }
}

fn topic(route: Route, what: &str) -> String {
    match route {
        Route::Relay => format!("{LK_PREFIX}{what}"),
        Route::Direct | Route::Fedmsg => format!("{FEDMSG_PREFIX}{what}"),
    }
}

// ---------------------------------------------------------------------------------------
// Clocks and CPU accounting from /proc

/// CPU use of the daemons and the machine over a run's measured interval.
struct CpuMark {
    trigger: Option<(f64, f64)>,
    relay: Option<(f64, f64)>,
    machine: (u64, u64),
}

impl CpuMark {
    fn take(trigger: u32, relay: Option<u32>) -> CpuMark {
        CpuMark {
            trigger: tree_cpu_secs(trigger),
            relay: relay.and_then(process_cpu_secs),
            machine: machine_ticks(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct CpuUse {
    /// The trigger daemon's own CPU seconds, with its live descendants' (hark's job spawner).
    daemon: f64,
    /// CPU seconds of the commands it ran (and, for fedmsg-trigger, their bash lines).
    children: f64,
    /// hark relay's CPU seconds (relay route).
    relay: Option<f64>,
    /// Share of the whole machine that was busy.
    machine_busy: f64,
}

fn cpu_use(before: &CpuMark, after: &CpuMark) -> CpuUse {
    let diff = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| {
        a.zip(b)
            .map(|(a, b)| ((b.0 - a.0).max(0.0), (b.1 - a.1).max(0.0)))
    };
    let (daemon, children) = diff(before.trigger, after.trigger).unwrap_or((0.0, 0.0));
    let busy = after.machine.0.saturating_sub(before.machine.0) as f64;
    let total = after.machine.1.saturating_sub(before.machine.1) as f64;
    CpuUse {
        daemon,
        children,
        relay: diff(before.relay, after.relay).map(|(own, _)| own),
        machine_busy: if total > 0.0 {
            100.0 * busy / total
        } else {
            0.0
        },
    }
}

// ---------------------------------------------------------------------------------------
// Messages and the load generator

#[derive(Default, Clone, Debug)]
struct Acks {
    accepted: u64,
    refused: u64,
    other: u64,
    first_refusal: Option<String>,
}

/// The generator's socket: a bound PUB (direct and fedmsg routes) or a DEALER connected
/// to the relay's submit socket (which acks every event).
struct Generator {
    sock: zmq::Socket,
    dealer: bool,
    acks: Acks,
    _ctx: zmq::Context,
}

impl Generator {
    fn new(route: Route, ep: &str) -> Result<Generator, String> {
        let ctx = zmq::Context::new();
        let zerr = |what: &'static str| move |e: zmq::Error| format!("generator {what}: {e}");
        let dealer = route == Route::Relay;
        let sock = ctx
            .socket(if dealer { zmq::DEALER } else { zmq::PUB })
            .map_err(zerr("socket"))?;
        // No limit: whatever is lost is lost by the daemon, not the generator.
        sock.set_sndhwm(0).map_err(zerr("sndhwm"))?;
        sock.set_rcvhwm(0).map_err(zerr("rcvhwm"))?;
        sock.set_sndtimeo(SEND_TIMEOUT_MS)
            .map_err(zerr("sndtimeo"))?;
        sock.set_linger(0).map_err(zerr("linger"))?;
        if dealer {
            sock.connect(ep).map_err(zerr("connect"))?;
        } else {
            sock.bind(ep).map_err(zerr("bind"))?;
        }
        Ok(Generator {
            sock,
            dealer,
            acks: Acks::default(),
            _ctx: ctx,
        })
    }

    fn send(&mut self, frames: &Frames) -> Result<(), String> {
        self.sock
            .send_multipart(frames.iter().map(|f| f.as_slice()), 0)
            .map_err(|e| format!("generator: send failed: {e}"))
    }

    /// Read every ack waiting on the DEALER.
    fn drain(&mut self) {
        if !self.dealer {
            return;
        }
        while let Ok(frame) = self.sock.recv_bytes(zmq::DONTWAIT) {
            let text = String::from_utf8_lossy(&frame);
            if text.contains(r#""status":"accepted""#) {
                self.acks.accepted += 1;
            } else if text.contains(r#""status":"refused""#) {
                self.acks.refused += 1;
                if self.acks.first_refusal.is_none() {
                    self.acks.first_refusal = Some(text.into_owned());
                }
            } else {
                self.acks.other += 1;
            }
        }
    }
}

/// Follows a file that commands append lines to; returns each complete new line once.
struct LineTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: usize,
}

impl LineTail {
    fn new(path: PathBuf) -> LineTail {
        LineTail {
            path,
            offset: 0,
            partial: Vec::new(),
            lines: 0,
        }
    }

    fn poll(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            out.push(String::from_utf8_lossy(&line[..pos]).into_owned());
        }
        self.lines += out.len();
        out
    }
}

// ---------------------------------------------------------------------------------------
// hark's job store (read-only, while the daemon runs)

struct JobRow {
    uuid: String,
    state: String,
    created: i64,
    started: Option<i64>,
    finished: Option<i64>,
}

fn open_store(path: &Path) -> Result<rusqlite::Connection, String> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Jobs of `rule` that reached an end state.
fn store_finished(path: &Path, rule: &str) -> Result<usize, String> {
    let conn = open_store(path)?;
    conn.query_row(
        "SELECT count(*) FROM jobs WHERE rule = ?1 AND state NOT IN ('pending', 'running')",
        [rule],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| usize::try_from(n).unwrap_or(0))
    .map_err(|e| format!("job store: {e}"))
}

fn store_jobs(path: &Path, rule: &str) -> Result<Vec<JobRow>, String> {
    let conn = open_store(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT j.state, j.created, j.started, j.finished,
                    (SELECT e.uuid FROM job_events e WHERE e.job = j.id ORDER BY e.pos LIMIT 1)
             FROM jobs j WHERE j.rule = ?1",
        )
        .map_err(|e| format!("job store: {e}"))?;
    let rows = stmt
        .query_map([rule], |r| {
            Ok(JobRow {
                state: r.get(0)?,
                created: r.get(1)?,
                started: r.get(2)?,
                finished: r.get(3)?,
                uuid: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            })
        })
        .map_err(|e| format!("job store: {e}"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("job store: {e}"))
}

// ---------------------------------------------------------------------------------------
// One run

struct Rig {
    settings: Settings,
    tmp: tempfile::TempDir,
    config: PathBuf,
    keys: BenchKeys,
    stamp: PathBuf,
    anchor: Result<PathBuf, String>,
}

#[derive(Default)]
struct LatencyOut {
    /// publish → command start, milliseconds, one per event that ran.
    ms: Vec<f64>,
    /// Mean ms of (send → job filed, filed → job started, started → command start); hark only.
    breakdown: Option<[f64; 3]>,
    /// Events per second the generator actually achieved.
    achieved_rate: f64,
}

#[derive(Default)]
struct BurstOut {
    /// Seconds from the first event sent to the last one sent.
    send_secs: f64,
    /// Seconds from the first event sent to the last command started (hark only).
    last_start: Option<f64>,
    /// Seconds from the first event sent to the last command finished.
    last_done: f64,
    /// Seconds from the first event sent to the first command started / finished.
    first_cmd: f64,
}

struct RunOut {
    sent: usize,
    /// Commands that ran for the events sent.
    ran: usize,
    /// hark jobs that ended in another state than succeeded.
    failed: usize,
    latency: Option<LatencyOut>,
    burst: Option<BurstOut>,
    cpu: CpuUse,
    load1: f64,
    note: String,
}

impl RunOut {
    fn pct(&self, q: f64) -> Option<f64> {
        self.latency.as_ref().and_then(|l| percentile(&l.ms, q))
    }

    fn max_ms(&self) -> Option<f64> {
        self.latency
            .as_ref()
            .and_then(|l| l.ms.iter().copied().reduce(f64::max))
    }

    /// Commands finished per second of the burst.
    fn done_rate(&self) -> Option<f64> {
        self.burst
            .as_ref()
            .filter(|b| b.last_done > 0.0)
            .map(|b| self.ran as f64 / b.last_done)
    }

    fn start_rate(&self) -> Option<f64> {
        self.burst
            .as_ref()
            .and_then(|b| b.last_start)
            .filter(|s| *s > 0.0)
            .map(|s| self.ran as f64 / s)
    }

    fn cpu_per_event_us(&self, secs: f64) -> Option<f64> {
        (self.ran > 0).then(|| secs * 1e6 / self.ran as f64)
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

impl Rig {
    fn start_relay(&self, dir: &Path, submit: &str, publish: &str) -> Result<LoggedChild, String> {
        let cmd = self
            .keys
            .relay_command(&self.settings.hark_bin, &self.config, submit, publish);
        LoggedChild::spawn(cmd, dir.join("hark-relay.log"), "hark relay")
    }

    /// Rule files for a case: the latency rule runs the stamp script; the burst rule runs
    /// `/bin/true`, and a second rule on a warm-up topic runs the stamp script so that the
    /// warm-up can see the daemon fire.
    fn write_rules(
        &self,
        case: Case,
        dir: &Path,
        stamps: &Path,
        warm: &Path,
    ) -> Result<(), String> {
        let s = &self.settings;
        let topics = |what: &str| {
            format!(
                "[{}, {}]",
                topic(Route::Direct, what),
                topic(Route::Relay, what)
            )
        };
        let stamp = yaml_str(&self.stamp.display().to_string());
        let text = match case.kind {
            Kind::Latency => format!(
                "rules:\n  - name: latency\n    match: {{topic: {}}}\n    run:\n      command: [{stamp}, {}]\n    concurrency: {{limit: {}, on_busy: queue}}\n",
                topics("latency"),
                yaml_str(&stamps.display().to_string()),
                s.latency_limit
            ),
            Kind::Burst => {
                let limit = if case.wide {
                    format!(
                        "    concurrency: {{limit: {}, on_busy: queue}}\n",
                        s.burst_limit
                    )
                } else {
                    String::new()
                };
                format!(
                    "rules:\n  - name: warm\n    match: {{topic: {}}}\n    run:\n      command: [{stamp}, {}]\n  - name: burst\n    match: {{topic: {}}}\n    run:\n      command: [/bin/true]\n{limit}",
                    topics("warmup"),
                    yaml_str(&warm.display().to_string()),
                    topics("burst"),
                )
            }
        };
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
        std::fs::write(rules.join("bench.yaml"), text).map_err(|e| e.to_string())
    }

    fn start_hark_trigger(&self, case: Case, dir: &Path, ep: &str) -> Result<LoggedChild, String> {
        let mut cmd = Command::new(&self.settings.hark_bin);
        cmd.arg("trigger")
            .arg("--config")
            .arg(&self.config)
            .arg(if case.route == Route::Relay {
                "--connect"
            } else {
                "--fedmsg"
            })
            .arg(ep)
            .arg("--rules")
            .arg(dir.join("rules"))
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--trusted")
            .arg(&self.keys.trusted)
            .args(["--grant", &format!("{PUBLISHER}=**")])
            // hark's default log level: two lines per job, as in production.
            .env("HARK_LOG", "info")
            .env_remove("JOURNAL_STREAM");
        LoggedChild::spawn(cmd, dir.join("hark-trigger.log"), "hark trigger")
    }

    fn start_fedmsg_trigger(
        &self,
        case: Case,
        dir: &Path,
        ep: &str,
        stamps: &Path,
    ) -> Result<LoggedChild, String> {
        let venv = self.anchor.as_ref().map_err(Clone::clone)?;
        let home = dir.join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        // fedmsg-trigger runs `/bin/bash -c "echo '<json>' | COMMAND"` per message. The
        // latency command is the stamp script (it reads the JSON from stdin); the burst
        // command is /bin/true, followed by a bash builtin that appends the end time (the
        // outer bash runs it after the pipeline, without another fork).
        let command = match case.kind {
            Kind::Latency => format!("{} {}", shell_quote(&self.stamp), shell_quote(stamps)),
            Kind::Burst => format!("/bin/true; echo $EPOCHREALTIME >> {}", shell_quote(stamps)),
        };
        let mut cmd = Command::new(venv.join("bin/fedmsg-trigger"));
        // fedmsg reads ./fedmsg.d/*.py: bench/trigger/fedmsg.d/trigger_bench.py takes the
        // generator's endpoint from this variable. No VIRTUAL_ENV and an empty HOME keep
        // other configurations out.
        cmd.arg("--command")
            .arg(command)
            .current_dir(self.settings.root.join("bench/trigger"))
            .env_remove("VIRTUAL_ENV")
            .env("HOME", &home)
            .env("HARK_BENCH_TRIGGER_ENDPOINT", ep);
        LoggedChild::spawn(cmd, dir.join("fedmsg-trigger.log"), "fedmsg-trigger")
    }

    fn message(
        &self,
        route: Route,
        what: &str,
        i: usize,
        id_prefix: &str,
    ) -> Result<Message, String> {
        let t = topic(route, what);
        match route {
            Route::Relay => signed_load(&t, i, self.settings.size, &self.keys.publisher),
            Route::Direct | Route::Fedmsg => Ok(fedmsg_load(&t, i, self.settings.size, id_prefix)),
        }
    }

    fn run(&self, case: Case, round: usize) -> Result<RunOut, String> {
        let dir = self.tmp.path().join(format!("{}-{round}", case.key()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let stamps = dir.join("stamps.txt");
        let warm = dir.join("warm.txt");
        let state = dir.join("state.db");
        let load1 = load_average();

        // The generator binds first (direct, fedmsg) so that subscribers connect at once.
        let (gen_ep, submit_ep, publish_ep) = (
            try_free_endpoint()?,
            try_free_endpoint()?,
            try_free_endpoint()?,
        );
        let mut gen = Generator::new(
            case.route,
            if case.route == Route::Relay {
                &submit_ep
            } else {
                &gen_ep
            },
        )?;
        let mut relay = match case.route {
            Route::Relay => Some(self.start_relay(&dir, &submit_ep, &publish_ep)?),
            _ => None,
        };
        let mut daemon = if case.is_hark() {
            self.write_rules(case, &dir, &stamps, &warm)?;
            let ep = if case.route == Route::Relay {
                &publish_ep
            } else {
                &gen_ep
            };
            let mut d = self.start_hark_trigger(case, &dir, ep)?;
            d.wait_for_output("trigger ready", START_TIMEOUT)?;
            d
        } else {
            self.start_fedmsg_trigger(case, &dir, &gen_ep, &stamps)?
        };

        // Warm-up: PUB/SUB drops everything until the subscription has propagated (and the
        // relay needs its own), so send warm-up events every 20 ms until one has made the
        // daemon start a command.
        let (warm_what, signal_file) = match (case.kind, case.route) {
            (Kind::Latency, _) => ("latency", stamps.clone()),
            (Kind::Burst, Route::Fedmsg) => ("burst", stamps.clone()),
            (Kind::Burst, _) => ("warmup", warm.clone()),
        };
        let mut signal = LineTail::new(signal_file);
        let started = Instant::now();
        let mut k = 0;
        while signal.poll().is_empty() {
            for d in [Some(&mut daemon), relay.as_mut()].into_iter().flatten() {
                if let Some(why) = d.exited() {
                    return Err(why);
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "no warm-up event made {} run a command within {START_TIMEOUT:?}; its output ends with:\n{}",
                    daemon.what(),
                    daemon.log_tail(15)
                ));
            }
            gen.send(&self.message(case.route, warm_what, k, "warm-")?.frames)?;
            gen.drain();
            k += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the warm-up commands finish, then wait until no more come (fedmsg-trigger's
        // burst command cannot tell warm-up from load, so its lines are counted from here).
        let quiet_start = Instant::now();
        let mut last_line = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            gen.drain();
            if !signal.poll().is_empty() {
                last_line = Instant::now();
            }
            if last_line.elapsed() >= SETTLE || quiet_start.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        gen.acks = Acks::default();

        let pid = daemon.pid();
        let relay_pid = relay.as_ref().map(LoggedChild::pid);
        let mut out = match case.kind {
            Kind::Latency => {
                self.latency(case, &mut gen, &mut daemon, &stamps, &state, pid, relay_pid)?
            }
            Kind::Burst => self.burst(
                case,
                &mut gen,
                &mut daemon,
                &mut signal,
                &state,
                pid,
                relay_pid,
            )?,
        };
        out.load1 = load1;
        let mut notes = vec![std::mem::take(&mut out.note)];
        if gen.dealer {
            gen.drain();
            let a = &gen.acks;
            if a.refused > 0 || a.accepted < out.sent as u64 {
                notes.push(format!(
                    "relay acks: {} accepted, {} refused, {} other{}",
                    a.accepted,
                    a.refused,
                    a.other,
                    a.first_refusal
                        .as_ref()
                        .map(|f| format!(" (first refusal: {f})"))
                        .unwrap_or_default()
                ));
            }
        }
        for d in [Some(&mut daemon), relay.as_mut()].into_iter().flatten() {
            if let Some(why) = d.exited() {
                notes.push(format!("died: {why}"));
            }
        }
        out.note = notes
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn latency(
        &self,
        case: Case,
        gen: &mut Generator,
        daemon: &mut LoggedChild,
        stamps: &Path,
        state: &Path,
        pid: u32,
        relay_pid: Option<u32>,
    ) -> Result<RunOut, String> {
        let s = &self.settings;
        // Signed events are built (and signed) before timing; fedmsg messages too.
        let msgs: Vec<Message> = (0..s.latency_count)
            .map(|i| self.message(case.route, "latency", i, ""))
            .collect::<Result<_, _>>()?;
        let mut sent: HashMap<String, f64> = HashMap::with_capacity(msgs.len());
        let period = Duration::from_secs_f64(1.0 / s.rate);
        let cpu_before = CpuMark::take(pid, relay_pid);
        let t0 = Instant::now();
        for (k, m) in msgs.iter().enumerate() {
            // An absolute schedule, so that a late send does not shift the ones after it.
            let due = t0 + period * k as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let ts = epoch_secs();
            gen.send(&m.frames)?;
            sent.insert(m.id.clone(), ts);
            gen.drain();
        }
        let load_secs = t0.elapsed().as_secs_f64();
        // For a look afterwards (HARK_BENCH_KEEP=1): id and send time of every event.
        let record: String = msgs
            .iter()
            .map(|m| format!("{} {:.6}\n", m.id, sent[&m.id]))
            .collect();
        if std::fs::write(stamps.with_file_name("sent.txt"), record).is_err() {
            eprintln!(
                "warning: cannot write sent.txt next to {}",
                stamps.display()
            );
        }
        let achieved_rate = if load_secs > 0.0 {
            (msgs.len().saturating_sub(1)) as f64 / load_secs
        } else {
            0.0
        };

        // Collect stamps until every event ran, or nothing new came for `idle`.
        let mut tail = LineTail::new(stamps.to_path_buf());
        let mut ran: HashMap<String, f64> = HashMap::new();
        let mut duplicates = 0usize;
        let mut unparsed = 0usize;
        let mut last_new = Instant::now();
        let mut timed_out = false;
        loop {
            for line in tail.poll() {
                let mut parts = line.split_whitespace();
                let (Some(id), Some(t)) = (parts.next(), parts.next().and_then(|t| t.parse().ok()))
                else {
                    unparsed += 1;
                    continue;
                };
                if sent.contains_key(id) {
                    last_new = Instant::now();
                    if ran.insert(id.to_string(), t).is_some() {
                        duplicates += 1;
                    }
                }
            }
            if ran.len() >= sent.len() || last_new.elapsed() > s.idle {
                break;
            }
            if t0.elapsed() > s.run_timeout {
                timed_out = true;
                break;
            }
            if daemon.exited().is_some() {
                break;
            }
            gen.drain();
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu = cpu_use(&cpu_before, &CpuMark::take(pid, relay_pid));

        let mut ms: Vec<f64> = Vec::with_capacity(ran.len());
        let mut negative = 0usize;
        for (id, t) in &ran {
            let d = (t - sent[id]) * 1000.0;
            if d < 0.0 {
                negative += 1;
            }
            ms.push(d);
        }
        // hark records when it filed and started each job (ms); split the latency there.
        // Millisecond timestamps are truncated, so +0.5 ms centres them.
        let mut failed = 0;
        let mut breakdown = None;
        let mut notes = Vec::new();
        if case.is_hark() {
            // The last commands may still be running: wait (bounded) for their jobs to end.
            let deadline = Instant::now() + Duration::from_secs(10);
            let jobs = loop {
                let jobs = store_jobs(state, "latency");
                let busy = jobs.as_ref().is_ok_and(|jobs| {
                    jobs.iter()
                        .any(|j| j.finished.is_none() && sent.contains_key(&j.uuid))
                });
                if !busy || Instant::now() > deadline {
                    break jobs;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match jobs {
                Ok(jobs) => {
                    let mut sums = [0.0f64; 3];
                    let mut n = 0usize;
                    for j in jobs.iter().filter(|j| sent.contains_key(&j.uuid)) {
                        if j.state != "succeeded" {
                            failed += 1;
                        }
                        let (Some(started), Some(stamp)) = (j.started, ran.get(&j.uuid)) else {
                            continue;
                        };
                        let filed = j.created as f64 / 1000.0 + 0.0005;
                        let started = started as f64 / 1000.0 + 0.0005;
                        sums[0] += (filed - sent[&j.uuid]) * 1000.0;
                        sums[1] += (started - filed) * 1000.0;
                        sums[2] += (stamp - started) * 1000.0;
                        n += 1;
                    }
                    if n > 0 {
                        breakdown = Some(sums.map(|x| x / n as f64));
                    }
                }
                Err(e) => notes.push(format!("cannot read the job store: {e}")),
            }
        }
        if timed_out {
            notes.push(format!("gave up after {:?}", s.run_timeout));
        }
        if duplicates > 0 {
            notes.push(format!("{duplicates} events ran twice"));
        }
        if unparsed > 0 {
            notes.push(format!("{unparsed} unreadable stamp lines"));
        }
        if negative > 0 {
            notes.push(format!(
                "{negative} commands stamped before their event was sent (clock?)"
            ));
        }
        if achieved_rate < s.rate * 0.95 {
            notes.push(format!(
                "generator reached only {achieved_rate:.0} events/s"
            ));
        }
        Ok(RunOut {
            sent: sent.len(),
            ran: ran.len(),
            failed,
            latency: Some(LatencyOut {
                ms,
                breakdown,
                achieved_rate,
            }),
            burst: None,
            cpu,
            load1: 0.0,
            note: notes.join("; "),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn burst(
        &self,
        case: Case,
        gen: &mut Generator,
        daemon: &mut LoggedChild,
        fedmsg_lines: &mut LineTail,
        state: &Path,
        pid: u32,
        relay_pid: Option<u32>,
    ) -> Result<RunOut, String> {
        let s = &self.settings;
        let msgs: Vec<Message> = (0..s.burst)
            .map(|i| self.message(case.route, "burst", i, ""))
            .collect::<Result<_, _>>()?;
        let cpu_before = CpuMark::take(pid, relay_pid);
        let first_sent = epoch_secs();
        let t0 = Instant::now();
        for (n, m) in msgs.iter().enumerate() {
            gen.send(&m.frames)?;
            if n % 64 == 63 {
                gen.drain();
            }
        }
        let send_secs = t0.elapsed().as_secs_f64();

        // Until every command finished, or nothing progressed for `idle`.
        let mut done_times: Vec<f64> = Vec::new();
        let mut progress = 0usize;
        let mut last_progress = Instant::now();
        let mut timed_out = false;
        let mut store_error = None;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            gen.drain();
            let now_done = if case.is_hark() {
                match store_finished(state, "burst") {
                    Ok(n) => n,
                    Err(e) => {
                        store_error = Some(e);
                        progress
                    }
                }
            } else {
                for line in fedmsg_lines.poll() {
                    if let Ok(t) = line.trim().parse::<f64>() {
                        done_times.push(t);
                    }
                }
                done_times.len()
            };
            if now_done > progress {
                progress = now_done;
                last_progress = Instant::now();
            }
            if progress >= msgs.len() || last_progress.elapsed() > s.idle {
                break;
            }
            if t0.elapsed() > s.run_timeout {
                timed_out = true;
                break;
            }
            if daemon.exited().is_some() {
                break;
            }
        }
        let cpu = cpu_use(&cpu_before, &CpuMark::take(pid, relay_pid));

        let mut notes = Vec::new();
        let mut failed = 0;
        let out = if case.is_hark() {
            let jobs = store_jobs(state, "burst")?;
            let ids: HashSet<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
            let jobs: Vec<&JobRow> = jobs
                .iter()
                .filter(|j| ids.contains(j.uuid.as_str()))
                .collect();
            failed = jobs
                .iter()
                .filter(|j| j.state != "succeeded" && j.finished.is_some())
                .count();
            let secs = |ms: i64| ms as f64 / 1000.0 + 0.0005 - first_sent;
            let starts: Vec<f64> = jobs.iter().filter_map(|j| j.started.map(secs)).collect();
            let dones: Vec<f64> = jobs.iter().filter_map(|j| j.finished.map(secs)).collect();
            let ran = jobs.iter().filter(|j| j.state == "succeeded").count();
            (
                ran,
                BurstOut {
                    send_secs,
                    last_start: starts.iter().copied().reduce(f64::max),
                    last_done: dones.iter().copied().reduce(f64::max).unwrap_or(0.0),
                    first_cmd: starts.iter().copied().reduce(f64::min).unwrap_or(0.0),
                },
            )
        } else {
            let rel: Vec<f64> = done_times.iter().map(|t| t - first_sent).collect();
            (
                rel.len().min(msgs.len()),
                BurstOut {
                    send_secs,
                    last_start: None,
                    last_done: rel.iter().copied().reduce(f64::max).unwrap_or(0.0),
                    first_cmd: rel.iter().copied().reduce(f64::min).unwrap_or(0.0),
                },
            )
        };
        if let Some(e) = store_error {
            notes.push(e);
        }
        if timed_out {
            notes.push(format!("gave up after {:?}", s.run_timeout));
        }
        if !case.is_hark() && done_times.len() > msgs.len() {
            notes.push(format!(
                "{} more command runs than events",
                done_times.len() - msgs.len()
            ));
        }
        Ok(RunOut {
            sent: msgs.len(),
            ran: out.0,
            failed,
            latency: None,
            burst: Some(out.1),
            cpu,
            load1: 0.0,
            note: notes.join("; "),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Calibration: the floors under the figures, measured on this machine

/// Median wall-clock milliseconds of a few things every event costs: a SQLite commit in
/// WAL mode with `synchronous=FULL` (hark's store: one per job transition) and `NORMAL`,
/// spawning and reaping `/bin/true`, and the stamp script's start-up (spawn → stamp) when
/// started directly (as hark does) and through fedmsg-trigger's `echo '<json>' | CMD` bash
/// line.
/// The floors the goals are measured against (issue 14), from the same run.
#[derive(Default)]
struct Floors {
    /// `/bin/true` spawned and reaped one after the other: commands/s on one core.
    spawn_one_core: Option<f64>,
    /// The same from one thread per core at once: commands/s the machine can start.
    spawn_all_cores: Option<f64>,
    cores: usize,
    /// Median ms from spawn to the stamp script's first line (its own start-up).
    stamp_startup_ms: Option<f64>,
    /// Median ms of a one-row `synchronous=FULL` commit (an fsync).
    fsync_ms: Option<f64>,
}

/// Commands/s of `threads` threads each spawning and reaping `/bin/true` `per_thread` times.
fn spawn_rate(threads: usize, per_thread: usize) -> Option<f64> {
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per_thread)
                    .filter(|_| {
                        Command::new("/bin/true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success())
                    })
                    .count()
            })
        })
        .collect();
    let done: usize = handles.into_iter().filter_map(|h| h.join().ok()).sum();
    let secs = t.elapsed().as_secs_f64();
    (done > 0 && secs > 0.0).then(|| done as f64 / secs)
}

fn calibrate(rig: &Rig) -> (Vec<(String, Vec<f64>)>, Floors) {
    let mut out = Vec::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut floors = Floors {
        cores,
        ..Floors::default()
    };
    let dir = rig.tmp.path().join("calibration");
    if std::fs::create_dir_all(&dir).is_err() {
        return (out, floors);
    }
    for sync in ["FULL", "NORMAL"] {
        let path = dir.join(format!("commit-{sync}.db"));
        let Ok(conn) = rusqlite::Connection::open(&path) else {
            continue;
        };
        let setup = format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
        );
        if conn.execute_batch(&setup).is_err() {
            continue;
        }
        let times: Vec<f64> = (0..500)
            .filter_map(|i| {
                let t = Instant::now();
                conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                    .ok()?;
                Some(t.elapsed().as_secs_f64() * 1000.0)
            })
            .collect();
        if sync == "FULL" {
            floors.fsync_ms = median(times.clone());
        }
        out.push((
            format!("SQLite commit of one row, WAL, `synchronous={sync}` (same file system as the job store; 500 commits)"),
            times,
        ));
    }
    floors.spawn_one_core = spawn_rate(1, 400);
    floors.spawn_all_cores = spawn_rate(cores, 400);
    let spawn = |mut cmd: Command| -> Option<f64> {
        let t = Instant::now();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        Some(t.elapsed().as_secs_f64() * 1000.0)
    };
    let times: Vec<f64> = (0..200)
        .filter_map(|_| spawn(Command::new("/bin/true")))
        .collect();
    out.push((
        "spawn and reap `/bin/true` from the benchmark process (200 runs)".into(),
        times,
    ));
    let body = fedmsg_load(&topic(Route::Direct, "latency"), 0, rig.settings.size, "")
        .frames
        .pop()
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let file = dir.join("stamps.txt");
    let mut direct = Vec::new();
    let mut piped = Vec::new();
    for i in 0..100 {
        let _ = std::fs::remove_file(&file);
        let t = epoch_secs();
        let ok = if i % 2 == 0 {
            let child = Command::new(&rig.stamp)
                .arg(&file)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            child.ok().is_some_and(|mut c| {
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = stdin.write_all(body.as_bytes());
                }
                c.wait().is_ok()
            })
        } else {
            let line = format!(
                "echo '{body}' | {} {}",
                shell_quote(&rig.stamp),
                shell_quote(&file)
            );
            Command::new("/bin/bash")
                .arg("-c")
                .arg(line)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        let stamp = std::fs::read_to_string(&file).ok().and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        });
        if let (true, Some(stamp)) = (ok, stamp) {
            let ms = (stamp - t) * 1000.0;
            if i % 2 == 0 {
                direct.push(ms);
            } else {
                piped.push(ms);
            }
        }
    }
    floors.stamp_startup_ms = median(direct.clone());
    out.push((
        "spawn → stamp: the stamp script started directly, event on stdin (as hark starts it; 50 runs)"
            .into(),
        direct,
    ));
    out.push((
        "spawn → stamp: `/bin/bash -c \"echo '<json>' | stamp\"` (as fedmsg-trigger starts it; 50 runs)"
            .into(),
        piped,
    ));
    out.retain(|(_, v)| !v.is_empty());
    (out, floors)
}

// ---------------------------------------------------------------------------------------
// Set-up and report

fn machine() -> Vec<String> {
    let bash = command_output(
        {
            let mut c = Command::new("/bin/bash");
            c.args(["-c", "echo $BASH_VERSION"]);
            c
        },
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    let mut lines = machine_lines();
    lines.push(format!("bash {}", bash.trim()));
    lines
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".to_string(), f)
}

fn ms1(v: f64) -> String {
    format!("{v:.1}")
}

fn setup(settings: Settings) -> Result<Rig, String> {
    let tmp = tempfile::Builder::new()
        .prefix("hark-trigger-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let keys = bench_keys(tmp.path())?;
    // Only the endpoints given on the command line: no default relay connection.
    let config = tmp.path().join("hark.yaml");
    std::fs::write(&config, "trigger:\n  connect: []\n").map_err(|e| e.to_string())?;
    let stamp = settings.root.join("bench/trigger/stamp");
    if !stamp.is_file() {
        return Err(format!("{} is missing", stamp.display()));
    }
    let anchor = find_anchor(&bench_venvs(&settings.root), "fedmsg-trigger");
    Ok(Rig {
        settings,
        tmp,
        config,
        keys,
        stamp,
        anchor,
    })
}

type Results = Vec<(Case, usize, Result<RunOut, String>)>;

/// One figure of a run, if it has it.
type Metric = dyn Fn(&RunOut) -> Option<f64>;

fn main() {
    let rig = setup(Settings::from_env())
        .unwrap_or_else(|e| exit_with(&format!("cannot set up the benchmark: {e}")));
    let s = &rig.settings;
    if let Err(why) = &rig.anchor {
        if !s.smoke {
            eprintln!("fedmsg-trigger not measured: {why}");
        }
    }
    let cases: Vec<Case> = s
        .cases
        .iter()
        .copied()
        .filter(|c| c.is_hark() || rig.anchor.is_ok())
        .collect();
    let mut results: Results = Vec::new();
    for round in 1..=s.runs {
        for &case in &cases {
            let out = rig.run(case, round);
            match &out {
                Ok(r) if r.latency.is_some() => eprintln!(
                    "round {round} {:<15} p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms  ran {}/{}  load {:.1} {}",
                    case.key(),
                    opt(r.pct(50.0), ms1),
                    opt(r.pct(99.0), ms1),
                    opt(r.max_ms(), ms1),
                    r.ran,
                    r.sent,
                    r.load1,
                    r.note
                ),
                Ok(r) => eprintln!(
                    "round {round} {:<15} {:>6} commands/s done, {:>6} started/s  ran {}/{}  load {:.1} {}",
                    case.key(),
                    opt(r.done_rate(), thousands),
                    opt(r.start_rate(), thousands),
                    r.ran,
                    r.sent,
                    r.load1,
                    r.note
                ),
                Err(e) => eprintln!("round {round} {:<15} FAILED: {e}", case.key()),
            }
            results.push((case, round, out));
        }
    }
    if s.smoke {
        let bad: Vec<String> = results
            .iter()
            .filter_map(|(case, _, r)| match r {
                Err(e) => Some(format!("{}: {e}", case.key())),
                Ok(r) if r.ran < r.sent || r.failed > 0 => Some(format!(
                    "{}: {} of {} events ran a command successfully ({} jobs failed) {}",
                    case.key(),
                    r.ran,
                    r.sent,
                    r.failed,
                    r.note
                )),
                Ok(r) if r.note.contains("twice") || r.note.contains("before their event") => {
                    Some(format!("{}: {}", case.key(), r.note))
                }
                Ok(_) => None,
            })
            .collect();
        println!(
            "trigger_latency smoke test (run `cargo bench --bench trigger_latency` to measure): {}",
            if bad.is_empty() { "ok" } else { "FAILED" }
        );
        for b in &bad {
            println!("  {b}");
        }
        let code = i32::from(!bad.is_empty());
        // process::exit skips destructors: remove the temporary directory first.
        drop(rig);
        std::process::exit(code);
    }
    eprintln!("calibrating...");
    let (calibration, floors) = calibrate(&rig);
    report(&rig, &cases, &results, &calibration, &floors);
    if std::env::var_os("HARK_BENCH_KEEP").is_some() {
        let path = rig.tmp.keep();
        eprintln!("kept the run directories in {}", path.display());
    }
}

/// One figure per round (the rounds that produced it).
fn per_round_values(
    results: &Results,
    runs: usize,
    case: Case,
    f: &dyn Fn(&RunOut) -> Option<f64>,
) -> Vec<f64> {
    (1..=runs)
        .filter_map(|round| {
            results
                .iter()
                .find(|(c, r, _)| *c == case && *r == round)
                .and_then(|(_, _, o)| o.as_ref().ok())
                .and_then(f)
        })
        .collect()
}

type Med<'a> = dyn Fn(Case, &dyn Fn(&RunOut) -> Option<f64>) -> Option<f64> + 'a;
type Rounds<'a> = dyn Fn(Case, &dyn Fn(&RunOut) -> Option<f64>) -> Vec<f64> + 'a;

/// Issue 14's goals, each measured figure next to its target and the ratio (medians over
/// rounds; floors from the same run, after the rounds).
fn goals(s: &Settings, floors: &Floors, med: &Med<'_>, rounds: &Rounds<'_>) {
    let lat = |route| Case::new(Kind::Latency, route, true);
    let burst = |route, wide| Case::new(Kind::Burst, route, wide);
    let p50 = |r: &RunOut| r.pct(50.0);
    let spread = |r: &RunOut| r.pct(99.0).zip(r.pct(50.0)).map(|(a, b)| a / b);
    let done = |r: &RunOut| r.done_rate();
    let daemon_us = |r: &RunOut| r.cpu_per_event_us(r.cpu.daemon);
    let startup = floors.stamp_startup_ms;
    let over = |ms: Option<f64>| ms.zip(startup).map(|(ms, st)| (ms - st).max(0.0));
    println!("## Goals (issue 14): each figure next to its target\n");
    println!("| goal | measured (median) | per round | target | ratio to target | met |");
    println!("|---|---:|---|---:|---:|:---:|");
    let list = |v: Vec<f64>, f: &dyn Fn(f64) -> String| {
        if v.is_empty() {
            "—".to_string()
        } else {
            v.into_iter().map(f).collect::<Vec<_>>().join(", ")
        }
    };
    // (goal, measured, per-round figures, target, lower is better, format)
    let row = |goal: &str,
               got: Option<f64>,
               per: Vec<f64>,
               target: f64,
               lower: bool,
               fmt: &dyn Fn(f64) -> String| {
        let ratio = got.map(|g| g / target);
        let met = got.map(|g| if lower { g <= target } else { g >= target });
        println!(
            "| {goal} | {} | {} | {} {} | {} | {} |",
            opt(got, fmt),
            list(per, fmt),
            if lower { "≤" } else { "≥" },
            fmt(target),
            opt(ratio, |r| format!("{r:.2}×")),
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    };
    let ms2 = |v: f64| format!("{v:.2} ms");
    let x2 = |v: f64| format!("{v:.2}×");
    let us = |v: f64| format!("{} µs", thousands(v));
    let pct = |v: f64| format!("{:.0} %", v * 100.0);
    row(
        "1. publish → command start p50, direct, minus the stamp script's start-up",
        over(med(lat(Route::Direct), &p50)),
        rounds(lat(Route::Direct), &p50)
            .into_iter()
            .filter_map(|v| over(Some(v)))
            .collect(),
        1.0,
        true,
        &ms2,
    );
    row(
        "1. the same through the relay",
        over(med(lat(Route::Relay), &p50)),
        rounds(lat(Route::Relay), &p50)
            .into_iter()
            .filter_map(|v| over(Some(v)))
            .collect(),
        1.5,
        true,
        &ms2,
    );
    row(
        "1. p99 ÷ p50, direct",
        med(lat(Route::Direct), &spread),
        rounds(lat(Route::Direct), &spread),
        3.0,
        true,
        &x2,
    );
    row(
        "1. p99 ÷ p50, through the relay",
        med(lat(Route::Relay), &spread),
        rounds(lat(Route::Relay), &spread),
        3.0,
        true,
        &x2,
    );
    for (what, case) in [
        ("latency, direct", lat(Route::Direct)),
        ("burst, direct, limit 1", burst(Route::Direct, false)),
        ("burst, direct, wide limit", burst(Route::Direct, true)),
    ] {
        row(
            &format!("2. daemon CPU per job ({what})"),
            med(case, &daemon_us),
            rounds(case, &daemon_us),
            300.0,
            true,
            &us,
        );
    }
    let share = |case: Case, floor: Option<f64>| {
        let per: Vec<f64> = floor
            .map(|f| rounds(case, &done).into_iter().map(|v| v / f).collect())
            .unwrap_or_default();
        (med(case, &done).zip(floor).map(|(v, f)| v / f), per)
    };
    for (route, name) in [
        (Route::Direct, "direct"),
        (Route::Relay, "through the relay"),
    ] {
        let (got, per) = share(burst(route, true), floors.spawn_all_cores);
        row(
            &format!(
                "3. burst at limit {} ÷ spawn-and-reap floor on {} cores, {name}",
                s.burst_limit, floors.cores
            ),
            got,
            per,
            0.8,
            false,
            &pct,
        );
        let (got, per) = share(burst(route, false), floors.spawn_one_core);
        row(
            &format!("3. burst at limit 1 ÷ one core's spawn-and-reap floor, {name}"),
            got,
            per,
            0.9,
            false,
            &pct,
        );
    }
    println!();
    println!(
        "Floors of this run: spawn and reap `/bin/true` {} /s on one core, {} /s on {} cores; the stamp script's start-up {}; a `synchronous=FULL` commit {}. Daemon CPU is the trigger's own (utime + stime) with its live helper processes (hark's job spawner), not the commands'; goal 1 subtracts the start-up floor from each round's p50.",
        opt(floors.spawn_one_core, thousands),
        opt(floors.spawn_all_cores, thousands),
        floors.cores,
        opt(startup, ms2),
        opt(floors.fsync_ms, ms2),
    );
    println!();
}

fn report(
    rig: &Rig,
    cases: &[Case],
    results: &Results,
    calibration: &[(String, Vec<f64>)],
    floors: &Floors,
) {
    let s = &rig.settings;
    let ok = |case: Case| -> Vec<&RunOut> {
        results
            .iter()
            .filter(|(c, _, _)| *c == case)
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .collect()
    };
    let med = |case: Case, f: &dyn Fn(&RunOut) -> Option<f64>| {
        median(ok(case).iter().filter_map(|r| f(r)).collect())
    };
    let range = |case: Case, f: &dyn Fn(&RunOut) -> Option<f64>, fmt: &dyn Fn(f64) -> String| {
        let v: Vec<f64> = ok(case).iter().filter_map(|r| f(r)).collect();
        if v.is_empty() {
            return "—".to_string();
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{}–{}", fmt(lo), fmt(hi))
    };
    let p50 = |r: &RunOut| r.pct(50.0);
    let p99 = |r: &RunOut| r.pct(99.0);
    let done = |r: &RunOut| r.done_rate();
    let lat = |route| Case::new(Kind::Latency, route, route != Route::Fedmsg);
    let burst = |route, wide| Case::new(Kind::Burst, route, wide);
    let anchor_p50 = med(lat(Route::Fedmsg), &p50);
    let anchor_p99 = med(lat(Route::Fedmsg), &p99);
    let anchor_burst = med(burst(Route::Fedmsg, false), &done);

    println!("# hark trigger: publish → command start, and bursts\n");
    for line in machine() {
        println!("- {line}");
    }
    println!("- hark binary: {}", s.hark_bin.display());
    match &rig.anchor {
        Ok(venv) => println!(
            "- anchor: {} ({})",
            venv.join("bin/fedmsg-trigger").display(),
            anchor_versions(venv, &["fedmsg", "pyzmq"])
                .unwrap_or_else(|| "versions unknown".into())
        ),
        Err(why) => println!("- anchor: **not measured**: {why}"),
    }
    println!(
        "- {} rounds, cases interleaved; latency: {} events at {} events/s, hark rule limit {}; burst: {} events at once; {} bytes of JSON per event",
        s.runs, s.latency_count, s.rate, s.latency_limit, s.burst, s.size
    );
    let loads: Vec<f64> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.load1))
        .collect();
    let busy: Vec<f64> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.cpu.machine_busy))
        .collect();
    if !loads.is_empty() {
        println!(
            "- machine load during the runs: 1-minute load average {:.1}–{:.1} (median {:.1}); whole machine {:.0}–{:.0} % busy (median {:.0} %)",
            loads.iter().copied().fold(f64::INFINITY, f64::min),
            loads.iter().copied().fold(0.0, f64::max),
            median(loads.clone()).unwrap_or(0.0),
            busy.iter().copied().fold(f64::INFINITY, f64::min),
            busy.iter().copied().fold(0.0, f64::max),
            median(busy.clone()).unwrap_or(0.0),
        );
    }
    println!();

    goals(s, floors, &|c, f| med(c, f), &|c, f| {
        per_round_values(results, s.runs, c, f)
    });

    // Summary: hark vs the anchor.
    println!("## Summary (medians over rounds)\n");
    println!("| | publish → command start p50 | p99 | burst of /bin/true, commands/s: limit 1 (default) | limit {} |", s.burst_limit);
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, route: Route| {
        let l = lat(route);
        let has = |c: Case| cases.contains(&c);
        let cell = |c: Case, f: &dyn Fn(&RunOut) -> Option<f64>, fmt: &dyn Fn(f64) -> String| {
            if has(c) {
                opt(med(c, f), fmt)
            } else {
                "—".into()
            }
        };
        let ms = |v: f64| format!("{v:.1} ms");
        println!(
            "| {name} | {} | {} | {} | {} |",
            cell(l, &p50, &ms),
            cell(l, &p99, &ms),
            cell(burst(route, false), &done, &thousands),
            if route == Route::Fedmsg {
                "— (serial)".into()
            } else {
                cell(burst(route, true), &done, &thousands)
            }
        );
    };
    row("hark trigger, fedmsg frames direct", Route::Direct);
    row("hark relay → hark trigger, signed", Route::Relay);
    if rig.anchor.is_ok() {
        row("fedmsg-trigger (anchor)", Route::Fedmsg);
    } else {
        println!(
            "| fedmsg-trigger (anchor) | not measured: {} | | | |",
            rig.anchor
                .as_ref()
                .err()
                .map(|w| w.replace('|', "\\|"))
                .unwrap_or_default()
        );
    }
    // Ratios are always hark ÷ fedmsg-trigger: below 1 is better for latency, above 1 is
    // better for commands per second.
    let verdict = |r: f64, lower_is_better: bool| {
        let better = if lower_is_better { r < 1.0 } else { r > 1.0 };
        if (r - 1.0).abs() < 0.05 {
            format!("{r:.2}× (same)")
        } else if better {
            format!("**{r:.2}×** (hark better)")
        } else {
            format!("**{r:.2}×** (hark worse)")
        }
    };
    let ratio_row = |name: &str, route: Route| {
        let cell = |h: Option<f64>, a: Option<f64>, lower: bool| {
            opt(h.zip(a).map(|(h, a)| h / a), |r| verdict(r, lower))
        };
        println!(
            "| {name} | {} | {} | {} | {} |",
            cell(med(lat(route), &p50), anchor_p50, true),
            cell(med(lat(route), &p99), anchor_p99, true),
            cell(med(burst(route, false), &done), anchor_burst, false),
            cell(med(burst(route, true), &done), anchor_burst, false),
        );
    };
    if rig.anchor.is_ok() {
        ratio_row("ratio hark direct ÷ fedmsg-trigger", Route::Direct);
        ratio_row("ratio hark via relay ÷ fedmsg-trigger", Route::Relay);
    }
    println!();
    // Per-round ratios: each round's hark and anchor runs share the machine's conditions.
    let per_round = |a: Case, b: Case, f: &dyn Fn(&RunOut) -> Option<f64>| {
        let v: Vec<f64> = (1..=s.runs)
            .filter_map(|round| {
                let get = |c: Case| {
                    results
                        .iter()
                        .find(|(x, r, _)| *x == c && *r == round)
                        .and_then(|(_, _, o)| o.as_ref().ok())
                        .and_then(f)
                };
                get(a)
                    .zip(get(b))
                    .filter(|(x, y)| *x > 0.0 && *y > 0.0)
                    .map(|(x, y)| x / y)
            })
            .collect();
        (!v.is_empty()).then(|| {
            format!(
                "{} (median {:.2}×)",
                v.iter()
                    .map(|r| format!("{r:.2}×"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(v.clone()).unwrap_or(0.0)
            )
        })
    };
    let anchor_lat = lat(Route::Fedmsg);
    let anchor_b = burst(Route::Fedmsg, false);
    let lines: [(&str, Case, Case, &Metric); 6] = [
        ("p50, hark direct", lat(Route::Direct), anchor_lat, &p50),
        ("p99, hark direct", lat(Route::Direct), anchor_lat, &p99),
        ("p50, hark via relay", lat(Route::Relay), anchor_lat, &p50),
        (
            "burst commands/s, hark direct limit 1",
            burst(Route::Direct, false),
            anchor_b,
            &done,
        ),
        (
            "burst commands/s, hark direct wide limit",
            burst(Route::Direct, true),
            anchor_b,
            &done,
        ),
        (
            "burst commands/s, hark via relay limit 1",
            burst(Route::Relay, false),
            anchor_b,
            &done,
        ),
    ];
    for (what, h, a, f) in lines {
        if let Some(line) = per_round(h, a, f) {
            println!("Per round, {what} ÷ fedmsg-trigger: {line}.  ");
        }
    }
    println!();

    let achieved = median(
        results
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .filter_map(|r| r.latency.as_ref().map(|l| l.achieved_rate))
            .collect(),
    );
    println!(
        "## Latency: publish → command start at {} events/s (generator achieved {})\n",
        s.rate,
        opt(achieved, |v| format!("{v:.1}/s"))
    );
    println!("| case | p50 ms | p99 ms | max ms | p50 range | p99 range | ran / sent | daemon CPU µs/event | command CPU µs/event | send → filed → started → stamp (mean ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for &case in cases.iter().filter(|c| c.kind == Kind::Latency) {
        let runs = ok(case);
        let sent: usize = runs.iter().map(|r| r.sent).sum();
        let ran: usize = runs.iter().map(|r| r.ran).sum();
        let bd: Vec<[f64; 3]> = runs
            .iter()
            .filter_map(|r| r.latency.as_ref().and_then(|l| l.breakdown))
            .collect();
        let bd = if bd.is_empty() {
            "—".to_string()
        } else {
            let m = |i: usize| median(bd.iter().map(|b| b[i]).collect()).unwrap_or(0.0);
            format!("{:.2} → {:.2} → {:.2}", m(0), m(1), m(2))
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {ran} / {sent} | {} | {} | {bd} |",
            case.label(s),
            if runs.len() < s.runs {
                format!(" ({}/{} runs succeeded)", runs.len(), s.runs)
            } else {
                String::new()
            },
            opt(med(case, &p50), ms1),
            opt(med(case, &p99), ms1),
            opt(med(case, &|r: &RunOut| r.max_ms()), ms1),
            range(case, &p50, &ms1),
            range(case, &p99, &ms1),
            opt(
                med(case, &|r: &RunOut| r
                    .cpu_per_event_us(r.cpu.daemon + r.cpu.relay.unwrap_or(0.0))),
                thousands
            ),
            opt(
                med(case, &|r: &RunOut| r.cpu_per_event_us(r.cpu.children)),
                thousands
            ),
        );
    }
    println!();
    println!("Latency = the wall clock the command read first (`$EPOCHREALTIME` in `bench/trigger/stamp`) minus the wall clock just before the generator sent the event. Daemon CPU includes the relay on the relay path. The breakdown (hark only) uses the job store's `created` and `started` milliseconds (+0.5 ms to centre the truncation).");
    println!();

    println!(
        "## Burst: {} events at once, `/bin/true` per event\n",
        s.burst
    );
    println!("| case | commands/s (median) | range | started/s | first command after (s) † | all done after (s) | sent in (s) | ran / sent | daemon CPU µs/command | command CPU µs/command |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &case in cases.iter().filter(|c| c.kind == Kind::Burst) {
        let runs = ok(case);
        let sent: usize = runs.iter().map(|r| r.sent).sum();
        let ran: usize = runs.iter().map(|r| r.ran).sum();
        let b = |f: &dyn Fn(&BurstOut) -> Option<f64>| {
            med(case, &|r: &RunOut| r.burst.as_ref().and_then(f))
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {ran} / {sent} | {} | {} |",
            case.label(s),
            if runs.len() < s.runs {
                format!(" ({}/{} runs succeeded)", runs.len(), s.runs)
            } else {
                String::new()
            },
            opt(med(case, &done), thousands),
            range(case, &done, &thousands),
            opt(med(case, &|r: &RunOut| r.start_rate()), thousands),
            opt(b(&|b| Some(b.first_cmd)), |v| format!("{v:.3}")),
            opt(b(&|b| Some(b.last_done)), |v| format!("{v:.2}")),
            opt(b(&|b| Some(b.send_secs)), |v| format!("{v:.3}")),
            opt(
                med(case, &|r: &RunOut| r
                    .cpu_per_event_us(r.cpu.daemon + r.cpu.relay.unwrap_or(0.0))),
                thousands
            ),
            opt(
                med(case, &|r: &RunOut| r.cpu_per_event_us(r.cpu.children)),
                thousands
            ),
        );
    }
    println!();
    println!("Commands/s = commands that ran ÷ time from the first event sent to the last command finished (hark: the job store's `finished`; fedmsg-trigger: a bash builtin after `/bin/true` appends `$EPOCHREALTIME`). Started/s: the same up to the last job's `started` (hark only; fedmsg-trigger starts each command when the previous one ended). † hark: first job started; fedmsg-trigger: first command finished.");
    println!();

    println!("## Raw runs\n");
    println!("| case | round | sent | ran | failed | p50 ms | p99 ms | max ms | mean ms | filed / started / stamp (ms) | commands/s | started/s | daemon CPU (s) | command CPU (s) | relay CPU (s) | machine busy | load avg | notes |");
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (case, round, out) in results {
        match out {
            Ok(r) => {
                let mean = r.latency.as_ref().and_then(|l| {
                    (!l.ms.is_empty()).then(|| l.ms.iter().sum::<f64>() / l.ms.len() as f64)
                });
                let bd = r
                    .latency
                    .as_ref()
                    .and_then(|l| l.breakdown)
                    .map_or("—".into(), |b| {
                        format!("{:.2} / {:.2} / {:.2}", b[0], b[1], b[2])
                    });
                println!(
                    "| {} | {round} | {} | {} | {} | {} | {} | {} | {} | {bd} | {} | {} | {:.2} | {:.2} | {} | {:.0} % | {:.1} | {} |",
                    case.key(),
                    r.sent,
                    r.ran,
                    r.failed,
                    opt(r.pct(50.0), ms1),
                    opt(r.pct(99.0), ms1),
                    opt(r.max_ms(), ms1),
                    opt(mean, ms1),
                    opt(r.done_rate(), thousands),
                    opt(r.start_rate(), thousands),
                    r.cpu.daemon,
                    r.cpu.children,
                    opt(r.cpu.relay, |v| format!("{v:.2}")),
                    r.cpu.machine_busy,
                    r.load1,
                    r.note.replace('|', "\\|").replace('\n', " ")
                );
            }
            Err(e) => println!(
                "| {} | {round} | | | | | | | | | | | | | | | | FAILED: {} |",
                case.key(),
                e.replace('\n', " ").replace('|', "\\|")
            ),
        }
    }
    if !calibration.is_empty() {
        println!();
        println!("## Floors on this machine (wall-clock ms)\n");
        println!("| step | median | p99 | max |");
        println!("|---|---:|---:|---:|");
        for (step, ms) in calibration {
            let f = |v: Option<f64>| opt(v, |v| format!("{v:.2}"));
            println!(
                "| {step} | {} | {} | {} |",
                f(median(ms.clone())),
                f(percentile(ms, 99.0)),
                f(ms.iter().copied().reduce(f64::max))
            );
        }
    }
}
