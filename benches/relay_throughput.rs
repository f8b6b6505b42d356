//! Relay throughput benchmark (`harness = false`): `cargo bench --bench relay_throughput`.
//!
//! Prints, as Markdown, the median throughput and loss of `hark relay` in two cases, next to
//! Python's `fedmsg-relay` measured by the same load generator and sink in the same session:
//!
//! - **pass-through**: fedmsg frames `[topic, json]` from PUB sockets that connect to the
//!   relay's inbound SUB (fedmsg's "active" pattern), counted by a SUB on the relay's
//!   publish socket. Run against `hark relay --fedmsg-inbound` and against `fedmsg-relay`;
//! - **verify + countersign**: signed Laniakea events submitted by a DEALER to hark's submit
//!   socket, verified, countersigned and published.
//!
//! Both hark cases run twice: without a journal and with one (`--journal`, a fresh SQLite
//! file per run, `synchronous=FULL`), so the table shows what writing every event to disk
//! before it is published and acked costs. The floor under that, one fsynced commit of this
//! machine's disk, is measured in the same run.
//!
//! A fan-out case runs pass-through with many subscribers (`HARK_BENCH_SUBSCRIBERS`), to
//! see whether the relay's CPU per message stays flat as subscribers are added.
//!
//! A further row, the **generator ceiling**, connects the same generator straight to the sink
//! (no relay) so that readers can see the generator is not what limits the relay rows.
//!
//! Nothing here asserts a speed. Every wait is bounded, every child process is killed when
//! its guard drops, and a missing or broken Python anchor is reported, not fatal.
//! The method and the figures are explained in `docs/benchmarks.md`.
//!
//! Knobs (environment): `HARK_BENCH_RUNS` (5), `HARK_BENCH_PASS_COUNT` (200000),
//! `HARK_BENCH_SIGNED_COUNT` (50000), `HARK_BENCH_SIZE` (500 bytes of JSON per message),
//! `HARK_BENCH_GENERATORS` (1 PUB thread), `HARK_BENCH_SENDERS` (1 DEALER thread),
//! `HARK_BENCH_RUN_TIMEOUT` (60 s), `HARK_BENCH_IDLE_MS` (1000: the sink stops after this
//! much silence once the generator is done), `HARK_BENCH_PYTHON_VENV` (else `.venv`, else
//! `bench/.venv-anchor`), `HARK_BIN` (else the `hark` binary cargo built for this bench).
//! `HARK_BENCH_SUBSCRIBERS` (100) and `HARK_BENCH_FANOUT_COUNT` (20000 messages) for the
//! fan-out case. Positional arguments select cases: `ceiling`, `hark`, `hark-journal`,
//! `fedmsg`, `signed`, `signed-journal`, `hark-fanout`.
//!
//! After the tables, a goals table puts each ratio that issues 14 and 9 set a target for
//! next to that target, with the floors (generator ceiling, Ed25519 sign and verify on one
//! core, one fsynced commit) measured in the same run.

#[path = "support/mod.rs"]
mod support;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::anchor::{bench_venvs, find_anchor};
use support::messages::{fedmsg_load, signed_load, Frames};
use support::net::try_free_endpoint;
use support::{
    anchor_versions, bench_keys, env_num, exit_with, machine_lines, machine_ticks, median,
    process_cpu_ns, remove_sqlite, stat_ticks, thousands, thread_self_cpu, BenchKeys, LoggedChild,
    PUBLISHER, RELAY_NAME,
};

use hark::event::canonical;
use hark::event::keys::SigningKey;
use serde_json::Value;

const PASS_TOPIC: &str = "org.fedoraproject.dev.bench.load";
const PASS_WARM: &str = "org.fedoraproject.dev.bench.warmup.";
const SIGNED_TAG: &str = "_lk.bench.load";
const SIGNED_WARM: &str = "_lk.bench.warmup.";
/// How long a relay may take to start and pass a first warm-up message.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends that block this long are an error, not a hang.
const SEND_TIMEOUT_MS: i32 = 5_000;

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    /// Run by `cargo test`: a quick correctness check, not a measurement.
    smoke: bool,
    runs: usize,
    pass_count: usize,
    signed_count: usize,
    size: usize,
    generators: usize,
    senders: usize,
    /// Subscribers in the fan-out case, and messages per fan-out run.
    subscribers: usize,
    fanout_count: usize,
    run_timeout: Duration,
    /// The sink stops when nothing arrived for this long after every sender finished.
    idle: Duration,
    cases: Vec<Case>,
    hark_bin: PathBuf,
    root: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let hark_bin = support::bench_hark_bin();
        let mut cases: Vec<Case> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .filter_map(|a| Case::ALL.into_iter().find(|c| c.key() == a))
            .collect();
        // `cargo bench` passes --bench; `cargo test --all-targets` does not, and then this
        // is a smoke test: one small round of the hark cases, failing only if a run fails
        // or the relay mangles what it relays (never on speed).
        let smoke = !std::env::args().any(|a| a == "--bench");
        if smoke {
            return Settings {
                smoke,
                runs: 1,
                pass_count: 2_000,
                signed_count: 50,
                size: 500,
                generators: 1,
                senders: 1,
                subscribers: 5,
                fanout_count: 500,
                run_timeout: Duration::from_secs(30),
                idle: Duration::from_secs(1),
                cases: vec![
                    Case::Ceiling,
                    Case::HarkPass,
                    Case::HarkPassJournal,
                    Case::HarkSigned,
                    Case::HarkSignedJournal,
                    Case::HarkFanout,
                ],
                hark_bin,
                root,
            };
        }
        if cases.is_empty() {
            cases = Case::ALL.to_vec();
        }
        Settings {
            smoke,
            runs: env_num("HARK_BENCH_RUNS", 5).max(1),
            pass_count: env_num("HARK_BENCH_PASS_COUNT", 200_000).max(1),
            signed_count: env_num("HARK_BENCH_SIGNED_COUNT", 50_000).max(1),
            size: env_num("HARK_BENCH_SIZE", 500).max(300),
            generators: env_num("HARK_BENCH_GENERATORS", 1).max(1),
            senders: env_num("HARK_BENCH_SENDERS", 1).max(1),
            subscribers: env_num("HARK_BENCH_SUBSCRIBERS", 100).max(1),
            fanout_count: env_num("HARK_BENCH_FANOUT_COUNT", 20_000).max(1),
            run_timeout: Duration::from_secs(env_num("HARK_BENCH_RUN_TIMEOUT", 60).max(5) as u64),
            idle: Duration::from_millis(env_num("HARK_BENCH_IDLE_MS", 1000).max(100) as u64),
            cases,
            hark_bin,
            root,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// Generator straight into the sink: what the measuring rig can do at most.
    Ceiling,
    /// `hark relay --fedmsg-inbound`: check and forward fedmsg frames byte for byte.
    HarkPass,
    /// Python `fedmsg-relay`: the anchor.
    FedmsgPass,
    /// The same with the journal on: every frame is written to disk before it is relayed.
    HarkPassJournal,
    /// `hark relay` submit socket: verify, check grants, dedupe, countersign, publish.
    HarkSigned,
    /// The same with the journal on: journaled before it is published and acked.
    HarkSignedJournal,
    /// Pass-through to many subscribers at once (the sink and `subscribers - 1` others).
    HarkFanout,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::Ceiling,
        Case::HarkPass,
        Case::HarkPassJournal,
        Case::FedmsgPass,
        Case::HarkSigned,
        Case::HarkSignedJournal,
        Case::HarkFanout,
    ];

    fn key(self) -> &'static str {
        match self {
            Case::Ceiling => "ceiling",
            Case::HarkPass => "hark",
            Case::HarkPassJournal => "hark-journal",
            Case::FedmsgPass => "fedmsg",
            Case::HarkSigned => "signed",
            Case::HarkSignedJournal => "signed-journal",
            Case::HarkFanout => "hark-fanout",
        }
    }

    fn signed(self) -> bool {
        matches!(self, Case::HarkSigned | Case::HarkSignedJournal)
    }

    fn journal(self) -> bool {
        matches!(self, Case::HarkPassJournal | Case::HarkSignedJournal)
    }

    fn label(self) -> &'static str {
        match self {
            Case::Ceiling => "generator → sink, no relay (ceiling)",
            Case::HarkPass => "hark relay, unsigned fedmsg pass-through",
            Case::HarkPassJournal => "hark relay, pass-through, journal on",
            Case::FedmsgPass => "fedmsg-relay (Python anchor), pass-through",
            Case::HarkSigned => "hark relay, verify + countersign",
            Case::HarkSignedJournal => "hark relay, verify + countersign, journal on",
            Case::HarkFanout => "hark relay, pass-through to many subscribers",
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc, per thread name

/// Nanoseconds on CPU so far of each thread of `pid`, summed by thread name. Read from
/// `schedstat` (nanoseconds), else from `stat` (10 ms ticks).
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut by_name: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.filter_map(Result::ok) {
        let is_main = task.file_name().to_str() == Some(pid.to_string().as_str());
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // Number the worker threads' names away so that they group.
        let comm = &stat[open + 1..close];
        let stem = comm.trim_end_matches(|c: char| c.is_ascii_digit());
        // The main thread is hark's socket thread (Python's: the Twisted reactor). Threads
        // that keep the process name are libzmq's I/O threads in hark (its vendored libzmq
        // does not name them).
        let name = if is_main {
            "main".to_string()
        } else if stem.len() < comm.len() {
            format!("{stem}*")
        } else {
            comm.to_string()
        };
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| stat_ticks(&stat[close + 1..]) * 10_000_000);
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += ns,
            None => by_name.push((name, ns)),
        }
    }
    by_name
}

/// What a relay thread does, from its name. hark's main thread is the socket thread, and
/// its libzmq I/O thread keeps the process name (the vendored libzmq does not name it);
/// fedmsg-relay's main thread runs the Twisted reactor, its other Python threads the
/// moksha consumer, and pyzmq's libzmq names its own threads `ZMQbg/...`.
fn thread_role(case: Case, name: &str) -> String {
    match (case, name) {
        (Case::FedmsgPass, "main") => "reactor (main)".into(),
        (Case::FedmsgPass, "fedmsg-relay") => "consumer threads".into(),
        (_, "main") => "socket thread".into(),
        (_, "hark") => "libzmq I/O".into(),
        (_, "relay-verify-*") => "verify workers".into(),
        _ => name.into(),
    }
}

/// CPU time of this whole process (generator and sink, including threads that have
/// exited), in nanoseconds.
fn own_cpu() -> u64 {
    process_cpu_ns("self")
}

/// CPU time of the calling thread, in nanoseconds.
fn cpu_diff(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = after
        .iter()
        .map(|(n, a)| {
            let b = before
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, t)| *t)
                .unwrap_or(0);
            (n.clone(), a.saturating_sub(b))
        })
        .filter(|(_, t)| *t > 0)
        .collect();
    out.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    out
}

// ---------------------------------------------------------------------------------------
// Load generator and sink

/// State shared by the sink, the generator threads and the orchestrator.
struct Shared {
    /// Set by the sink when generator `i`'s warm-up message came through.
    warmed: Vec<AtomicBool>,
    /// Generators that finished sending their load.
    senders_done: AtomicUsize,
    sink_done: AtomicBool,
    abort: AtomicBool,
}

impl Shared {
    fn new(generators: usize) -> Arc<Shared> {
        Arc::new(Shared {
            warmed: (0..generators).map(|_| AtomicBool::new(false)).collect(),
            senders_done: AtomicUsize::new(0),
            sink_done: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        })
    }
}

#[derive(Default, Clone, Debug)]
struct Acks {
    accepted: u64,
    duplicate: u64,
    refused: u64,
    first_refusal: Option<String>,
}

impl Acks {
    fn add(&mut self, other: &Acks) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.refused += other.refused;
        if self.first_refusal.is_none() {
            self.first_refusal.clone_from(&other.first_refusal);
        }
    }

    /// Read every ack waiting on a DEALER. Counting by substring keeps this cheap.
    fn drain(&mut self, sock: &zmq::Socket, warmup: bool) {
        while let Ok(frame) = sock.recv_bytes(zmq::DONTWAIT) {
            if warmup {
                continue;
            }
            let text = String::from_utf8_lossy(&frame);
            if text.contains(r#""status":"accepted""#) {
                self.accepted += 1;
            } else if text.contains(r#""status":"duplicate""#) {
                self.duplicate += 1;
            } else {
                self.refused += 1;
                if self.first_refusal.is_none() {
                    self.first_refusal = Some(text.into_owned());
                }
            }
        }
    }
}

type GenHandle = JoinHandle<Result<GenOut, String>>;

struct GenOut {
    sent: u64,
    send_time: Duration,
    acks: Acks,
}

/// One generator thread: warm up until the sink has seen this thread, wait for "go", send
/// its share of the load as fast as libzmq takes it, then (DEALERs) collect acks.
#[allow(clippy::too_many_arguments)]
fn generator(
    sock: zmq::Socket,
    id: usize,
    load: Arc<Vec<Frames>>,
    range: std::ops::Range<usize>,
    mut warm: impl FnMut(usize, u64) -> Result<Frames, String>,
    dealer: bool,
    shared: Arc<Shared>,
    go: mpsc::Receiver<bool>,
) -> Result<GenOut, String> {
    let send = |frames: &Frames| {
        sock.send_multipart(frames.iter().map(|f| f.as_slice()), 0)
            .map_err(|e| format!("generator {id}: send failed: {e}"))
    };
    let mut acks = Acks::default();
    let started = Instant::now();
    let mut k = 0u64;
    while !shared.warmed[id].load(Ordering::Acquire) {
        if shared.abort.load(Ordering::Relaxed) {
            return Err(format!("generator {id}: aborted during warm-up"));
        }
        if started.elapsed() > WARMUP_TIMEOUT {
            return Err(format!(
                "generator {id}: no warm-up message reached the sink within {WARMUP_TIMEOUT:?}"
            ));
        }
        send(&warm(id, k)?)?;
        k += 1;
        if dealer {
            acks.drain(&sock, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match go.recv_timeout(WARMUP_TIMEOUT * 2) {
        Ok(true) => {}
        _ => return Err(format!("generator {id}: no go signal")),
    }
    // Warm-up acks still in flight are not load acks.
    if dealer {
        acks.drain(&sock, true);
    }
    let t0 = Instant::now();
    let mut sent = 0u64;
    for (n, frames) in load[range].iter().enumerate() {
        send(frames)?;
        sent += 1;
        if dealer && n % 256 == 255 {
            acks.drain(&sock, false);
        }
    }
    let send_time = t0.elapsed();
    shared.senders_done.fetch_add(1, Ordering::AcqRel);
    // Keep the socket open until the sink is done: closing it (linger 0) would throw away
    // whatever libzmq has not yet written to the relay.
    while !shared.sink_done.load(Ordering::Acquire) && !shared.abort.load(Ordering::Relaxed) {
        if dealer {
            let _ = sock.poll(zmq::POLLIN, 20);
            acks.drain(&sock, false);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if dealer {
        acks.drain(&sock, false);
    }
    Ok(GenOut {
        sent,
        send_time,
        acks,
    })
}

struct SinkOut {
    received: u64,
    last: Option<Instant>,
    /// One received load message, to check what the relay did to it.
    sample: Option<Frames>,
    timed_out: bool,
    stray: u64,
    /// Longest silence between two load messages.
    max_gap: Duration,
}

/// Count load messages until all arrived, or the senders are done and nothing came for
/// `idle`, or `limit` passed. Warm-up messages mark their generator as warmed.
#[allow(clippy::too_many_arguments)]
fn sink(
    sock: zmq::Socket,
    data_topic: &'static str,
    warm_prefix: &'static str,
    expected: u64,
    generators: usize,
    shared: Arc<Shared>,
    limit: Duration,
    idle: Duration,
) -> SinkOut {
    let started = Instant::now();
    let mut out = SinkOut {
        received: 0,
        last: None,
        sample: None,
        timed_out: false,
        stray: 0,
        max_gap: Duration::ZERO,
    };
    let mut topic = zmq::Message::new();
    let mut body = zmq::Message::new();
    let mut done_seen: Option<Instant> = None;
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let _ = sock.poll(zmq::POLLIN, 50);
        while sock.recv(&mut topic, zmq::DONTWAIT).is_ok() {
            let has_body = topic.get_more();
            if has_body {
                // Keep the last frame; a well-formed message has exactly two.
                while sock.recv(&mut body, 0).is_ok() && body.get_more() {}
            }
            if &topic[..] == data_topic.as_bytes() {
                out.received += 1;
                let now = Instant::now();
                if let Some(last) = out.last {
                    out.max_gap = out.max_gap.max(now - last);
                }
                out.last = Some(now);
                if out.sample.is_none() && has_body {
                    out.sample = Some(vec![topic.to_vec(), body.to_vec()]);
                }
            } else if let Some(rest) = topic.strip_prefix(warm_prefix.as_bytes()) {
                let id: Option<usize> = std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok());
                if let Some(flag) = id.and_then(|i| shared.warmed.get(i)) {
                    flag.store(true, Ordering::Release);
                }
            } else {
                out.stray += 1;
            }
        }
        if out.received >= expected {
            break;
        }
        if shared.senders_done.load(Ordering::Acquire) >= generators {
            let done_at = *done_seen.get_or_insert_with(Instant::now);
            let quiet_since = out.last.map_or(done_at, |l| l.max(done_at));
            if quiet_since.elapsed() >= idle {
                break;
            }
        }
        if started.elapsed() > limit {
            out.timed_out = true;
            break;
        }
    }
    shared.sink_done.store(true, Ordering::Release);
    out
}

// ---------------------------------------------------------------------------------------
// One run

struct Rig {
    settings: Settings,
    tmp: tempfile::TempDir,
    config: PathBuf,
    keys: BenchKeys,
    pass_load: Arc<Vec<Frames>>,
    signed_load: Arc<Vec<Frames>>,
    anchor: Result<PathBuf, String>,
    /// One line on what an fsynced journal commit costs on this disk, when journal cases run.
    fsync_floor: Option<String>,
}

struct RunOut {
    sent: u64,
    received: u64,
    secs: f64,
    offered: f64,
    acks: Option<Acks>,
    /// Relay CPU over the measured interval, nanoseconds per thread name.
    cpu: Vec<(String, u64)>,
    /// CPU nanoseconds of this process (generator and sink) over the same interval.
    rig_cpu: u64,
    /// Share of the whole machine's CPU time that was busy over the interval.
    machine_busy: f64,
    /// Longest silence at the sink between two load messages.
    max_gap: Duration,
    note: String,
}

impl RunOut {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.received as f64 / self.secs
        } else {
            0.0
        }
    }

    fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * (self.sent.saturating_sub(self.received)) as f64 / self.sent as f64
        }
    }

    fn cpu_us_per_msg(&self) -> Option<f64> {
        let ns: u64 = self.cpu.iter().map(|(_, t)| t).sum();
        (self.received > 0 && ns > 0).then(|| ns as f64 / 1000.0 / self.received as f64)
    }
}

impl Rig {
    fn start_hark(
        &self,
        submit: &str,
        publish: &str,
        inbound: &str,
        journal: bool,
    ) -> Result<LoggedChild, String> {
        let mut cmd =
            self.keys
                .relay_command(&self.settings.hark_bin, &self.config, submit, publish);
        cmd.args(["--fedmsg-inbound", inbound]);
        if journal {
            // A fresh journal each run, so that every run starts at the same file size.
            let path = self.tmp.path().join("journal.db");
            remove_sqlite(&path);
            cmd.arg("--journal")
                .arg(&path)
                .args(["--replay", &try_free_endpoint()?]);
        }
        LoggedChild::spawn(cmd, self.tmp.path().join("hark-relay.log"), "hark relay")
    }

    /// `n` SUB sockets on `endpoint` that read and drop everything until the sink is done.
    fn drainers(
        &self,
        endpoint: &str,
        n: usize,
        shared: Arc<Shared>,
    ) -> Result<JoinHandle<()>, String> {
        let ctx = zmq::Context::new();
        let mut socks = Vec::new();
        for _ in 0..n {
            let sock = ctx.socket(zmq::SUB).map_err(|e| e.to_string())?;
            sock.set_rcvhwm(0).map_err(|e| e.to_string())?;
            sock.set_linger(0).map_err(|e| e.to_string())?;
            sock.set_subscribe(b"").map_err(|e| e.to_string())?;
            sock.connect(endpoint).map_err(|e| e.to_string())?;
            socks.push(sock);
        }
        std::thread::Builder::new()
            .name("bench-drain".into())
            .spawn(move || {
                let _ctx = ctx;
                let mut msg = zmq::Message::new();
                while !shared.sink_done.load(Ordering::Acquire)
                    && !shared.abort.load(Ordering::Relaxed)
                {
                    let mut items: Vec<zmq::PollItem> =
                        socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
                    let _ = zmq::poll(&mut items, 20);
                    drop(items);
                    for sock in &socks {
                        while sock.recv(&mut msg, zmq::DONTWAIT).is_ok() {}
                    }
                }
            })
            .map_err(|e| e.to_string())
    }

    fn start_fedmsg(&self, inbound: &str, outbound: &str) -> Result<LoggedChild, String> {
        let venv = self.anchor.as_ref().map_err(Clone::clone)?;
        let home = self.tmp.path().join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(venv.join("bin/fedmsg-relay"));
        // fedmsg reads ./fedmsg.d/*.py: bench/fedmsg.d/relay_bench.py takes the endpoints
        // from these variables. No VIRTUAL_ENV and an empty HOME keep other configs out.
        cmd.current_dir(self.settings.root.join("bench"))
            .env_remove("VIRTUAL_ENV")
            .env("HOME", &home)
            .env("HARK_BENCH_RELAY_INBOUND", inbound)
            .env("HARK_BENCH_RELAY_OUTBOUND", outbound);
        LoggedChild::spawn(
            cmd,
            self.tmp.path().join("fedmsg-relay.log"),
            "fedmsg-relay",
        )
    }

    fn run(&self, case: Case) -> Result<RunOut, String> {
        let s = &self.settings;
        let (in_ep, out_ep, submit_ep) = (
            try_free_endpoint()?,
            try_free_endpoint()?,
            try_free_endpoint()?,
        );
        let mut relay = match case {
            Case::Ceiling => None,
            Case::HarkPass
            | Case::HarkPassJournal
            | Case::HarkSigned
            | Case::HarkSignedJournal
            | Case::HarkFanout => {
                Some(self.start_hark(&submit_ep, &out_ep, &in_ep, case.journal())?)
            }
            Case::FedmsgPass => Some(self.start_fedmsg(&in_ep, &out_ep)?),
        };
        let signed = case.signed();
        let (load, n_gen, topic, warm_prefix) = if signed {
            (self.signed_load.clone(), s.senders, SIGNED_TAG, SIGNED_WARM)
        } else if case == Case::HarkFanout {
            let n = s.fanout_count.min(self.pass_load.len());
            let load = Arc::new(self.pass_load[..n].to_vec());
            (load, s.generators, PASS_TOPIC, PASS_WARM)
        } else {
            (self.pass_load.clone(), s.generators, PASS_TOPIC, PASS_WARM)
        };
        let shared = Shared::new(n_gen);
        // The other subscribers of the fan-out case: one thread drains them all.
        let extra_subs = if case == Case::HarkFanout {
            Some(self.drainers(&out_ep, s.subscribers.saturating_sub(1), shared.clone())?)
        } else {
            None
        };

        // Separate contexts so that the sink and the generator each have an I/O thread.
        let sink_ctx = zmq::Context::new();
        let gen_ctx = zmq::Context::new();
        let zerr = |what: &str| {
            let what = what.to_string();
            move |e: zmq::Error| format!("{what}: {e}")
        };
        let sink_sock = sink_ctx.socket(zmq::SUB).map_err(zerr("sink socket"))?;
        sink_sock.set_rcvhwm(0).map_err(zerr("sink rcvhwm"))?;
        sink_sock.set_linger(0).map_err(zerr("sink linger"))?;
        sink_sock.set_subscribe(b"").map_err(zerr("subscribe"))?;
        let gen_target = if case == Case::Ceiling {
            sink_sock.bind(&in_ep).map_err(zerr("sink bind"))?;
            in_ep.clone()
        } else {
            sink_sock.connect(&out_ep).map_err(zerr("sink connect"))?;
            if signed {
                submit_ep.clone()
            } else {
                in_ep.clone()
            }
        };
        let limit = WARMUP_TIMEOUT + s.run_timeout;
        let expected = load.len() as u64;
        let sink_shared = shared.clone();
        let idle = s.idle;
        let sink_thread = std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                sink(
                    sink_sock,
                    topic,
                    warm_prefix,
                    expected,
                    n_gen,
                    sink_shared,
                    limit,
                    idle,
                )
            })
            .map_err(|e| e.to_string())?;

        let mut gens: Vec<(GenHandle, mpsc::Sender<bool>)> = Vec::new();
        let chunk = load.len().div_ceil(n_gen);
        for id in 0..n_gen {
            let sock = gen_ctx
                .socket(if signed { zmq::DEALER } else { zmq::PUB })
                .map_err(zerr("generator socket"))?;
            // Unlimited queues: whatever is lost is lost by the relay, not the generator.
            sock.set_sndhwm(0).map_err(zerr("sndhwm"))?;
            sock.set_rcvhwm(0).map_err(zerr("rcvhwm"))?;
            sock.set_sndtimeo(SEND_TIMEOUT_MS)
                .map_err(zerr("sndtimeo"))?;
            sock.set_linger(0).map_err(zerr("linger"))?;
            sock.connect(&gen_target)
                .map_err(zerr("generator connect"))?;
            let range = (id * chunk).min(load.len())..((id + 1) * chunk).min(load.len());
            let (tx, rx) = mpsc::channel();
            let (load, shared) = (load.clone(), shared.clone());
            let key = self.keys.publisher.clone();
            let size = s.size;
            let handle = std::thread::Builder::new()
                .name(format!("bench-gen-{id}"))
                .spawn(move || {
                    let warm = move |id: usize, k: u64| {
                        let message = if signed {
                            signed_load(&format!("{SIGNED_WARM}{id}"), k as usize, size, &key)?
                        } else {
                            fedmsg_load(&format!("{PASS_WARM}{id}"), k as usize, size, "")
                        };
                        Ok(message.frames)
                    };
                    generator(sock, id, load, range, warm, signed, shared, rx)
                })
                .map_err(|e| e.to_string())?;
            gens.push((handle, tx));
        }

        // Bounded wait for every generator's warm-up to reach the sink.
        let warm_start = Instant::now();
        let mut failure = None;
        while !shared.warmed.iter().all(|w| w.load(Ordering::Acquire)) {
            if let Some(why) = relay.as_mut().and_then(LoggedChild::exited) {
                failure = Some(why);
                break;
            }
            if warm_start.elapsed() > WARMUP_TIMEOUT || gens.iter().any(|(h, _)| h.is_finished()) {
                failure = Some(format!(
                    "warm-up did not get through within {WARMUP_TIMEOUT:?}{}",
                    relay
                        .as_ref()
                        .map(|r| format!("; relay output:\n{}", r.log_tail(15)))
                        .unwrap_or_default()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = relay.as_ref().map(LoggedChild::pid);
        let cpu_before = pid.map(thread_cpu).unwrap_or_default();
        let rig_before = own_cpu();
        let machine_before = machine_ticks();
        let t0 = Instant::now();
        for (_, go) in &gens {
            let _ = go.send(failure.is_none());
        }
        if failure.is_some() {
            shared.abort.store(true, Ordering::Relaxed);
        }
        // Bounded joins: the sink gives up at `limit`, generators never block longer than
        // SEND_TIMEOUT_MS per send and stop collecting acks when the sink is done.
        let deadline = Instant::now() + limit + Duration::from_secs(10);
        while !(sink_thread.is_finished() && gens.iter().all(|(h, _)| h.is_finished())) {
            if Instant::now() > deadline {
                shared.abort.store(true, Ordering::Relaxed);
            }
            if Instant::now() > deadline + Duration::from_secs(10) {
                // Threads stuck inside libzmq: leave them, the process exits after the report.
                return Err(failure.unwrap_or_else(|| "benchmark threads did not stop".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let cpu_after = pid.map(thread_cpu).unwrap_or_default();
        if let Some(drainers) = extra_subs {
            let _ = drainers.join();
        }
        let rig_cpu = own_cpu().saturating_sub(rig_before);
        let machine_after = machine_ticks();
        let machine_busy = {
            let busy = machine_after.0.saturating_sub(machine_before.0) as f64;
            let total = machine_after.1.saturating_sub(machine_before.1) as f64;
            if total > 0.0 {
                100.0 * busy / total
            } else {
                0.0
            }
        };
        let sink_out = sink_thread
            .join()
            .map_err(|_| "sink panicked".to_string())?;
        let mut sent = 0;
        let mut send_time = Duration::ZERO;
        let mut acks = Acks::default();
        let mut gen_error = None;
        for (h, _) in gens {
            match h.join() {
                Ok(Ok(out)) => {
                    sent += out.sent;
                    send_time = send_time.max(out.send_time);
                    acks.add(&out.acks);
                }
                Ok(Err(e)) => gen_error = gen_error.or(Some(e)),
                Err(_) => gen_error = gen_error.or(Some("generator panicked".into())),
            }
        }
        // The first cause wins: a relay that died explains a generator that gave up.
        if let Some(why) = failure.or(gen_error) {
            return Err(why);
        }
        let exited = relay.as_mut().and_then(LoggedChild::exited);
        drop(relay);
        let secs = sink_out
            .last
            .map(|l| l.saturating_duration_since(t0).as_secs_f64())
            .unwrap_or(0.0);
        let mut notes = Vec::new();
        if sink_out.timed_out {
            notes.push(format!("sink gave up after {limit:?}"));
        }
        if sink_out.stray > 0 {
            notes.push(format!("{} stray messages", sink_out.stray));
        }
        if let Some(why) = exited {
            notes.push(format!("relay died: {why}"));
        }
        if let Some(sample) = &sink_out.sample {
            notes.push(self.check_sample(case, sample, &load));
        }
        Ok(RunOut {
            sent,
            received: sink_out.received,
            secs,
            offered: if send_time.is_zero() {
                0.0
            } else {
                sent as f64 / send_time.as_secs_f64()
            },
            acks: signed.then_some(acks),
            cpu: cpu_diff(&cpu_before, &cpu_after)
                .into_iter()
                .map(|(name, ns)| (thread_role(case, &name), ns))
                .collect(),
            rig_cpu,
            machine_busy,
            max_gap: sink_out.max_gap,
            note: notes
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// What the relay did to a message: hark must forward fedmsg frames byte for byte and
    /// must countersign native events.
    fn check_sample(&self, case: Case, sample: &Frames, load: &[Frames]) -> String {
        let Some(body) = sample.get(1) else {
            return "sample has no body frame".into();
        };
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        match case {
            Case::Ceiling => String::new(),
            Case::HarkPass | Case::HarkPassJournal | Case::FedmsgPass | Case::HarkFanout => {
                let i = parsed
                    .as_ref()
                    .and_then(|v| v.get("i"))
                    .and_then(|i| i.to_string().parse::<usize>().ok());
                match i.and_then(|i| load.get(i)) {
                    Some(orig) if orig[1] == *body => "byte-identical".into(),
                    Some(_) => "re-encoded".into(),
                    None => "unrecognised body".into(),
                }
            }
            Case::HarkSigned | Case::HarkSignedJournal => {
                let sigs = parsed.as_ref().and_then(|v| v.get("signatures"));
                let has = |who: &str| sigs.and_then(|s| s.get(who)).is_some();
                if has(PUBLISHER) && has(RELAY_NAME) {
                    String::new()
                } else {
                    "NOT countersigned".into()
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Set-up and report

fn machine() -> Vec<String> {
    let (maj, min, pat) = zmq::version();
    let mut lines = machine_lines();
    lines.push(format!("libzmq (bench side): {maj}.{min}.{pat}"));
    lines
}

/// The in-process floors, measured after the rounds.
#[derive(Default)]
struct Calibration {
    steps: Vec<(&'static str, f64)>,
    /// Ed25519 alone on one core, CPU µs: signing one event, verifying one, and verifying
    /// one within a batch of [`BATCH`].
    sign_us: Option<f64>,
    verify_us: Option<f64>,
    batch_verify_us: Option<f64>,
}

/// Signatures per `verify_batch` call in the calibration, as the relay's workers batch.
const BATCH: usize = 32;

/// What each step of the relay's per-message work costs on one thread of this machine,
/// without sockets: the floor under the relay rows. Median of five passes, CPU µs per
/// message.
fn calibrate(rig: &Rig) -> Calibration {
    use hark::admit::TrustPolicy;
    use hark::config::TrustConfig;
    use hark::event::keys::Keyring;
    use hark::event::{sign, Event};

    let n = 2_000;
    let mut ring = Keyring::default();
    ring.insert(rig.keys.publisher.verify_key());
    let grants = vec![(PUBLISHER.to_string(), vec!["_lk.bench.**".to_string()])];
    let Ok(policy) = TrustPolicy::new(ring, &grants, &TrustConfig::default()) else {
        return Calibration::default();
    };
    let mut cal = Calibration::default();
    let countersign = SigningKey::generate(RELAY_NAME);
    let time = |f: &mut dyn FnMut(usize)| -> f64 {
        let passes: Vec<f64> = (0..5)
            .map(|_| {
                // On-CPU time of this thread, so that a busy machine does not inflate it.
                let t = thread_self_cpu();
                for i in 0..n {
                    f(i);
                }
                thread_self_cpu().saturating_sub(t) as f64 / 1000.0 / n as f64
            })
            .collect();
        median(passes).unwrap_or(0.0)
    };
    let mut out = Vec::new();
    let pass = &rig.pass_load;
    if pass.len() >= n {
        out.push((
            "fedmsg frames: copy + parse + envelope checks (`Event::from_frames`)",
            time(&mut |i| {
                std::hint::black_box(Event::from_frames(pass[i].clone()).ok());
            }),
        ));
    }
    let signed = &rig.signed_load;
    if signed.len() >= n {
        let parsed: Vec<Event> = signed[..n]
            .iter()
            .filter_map(|f| Event::from_submission(f[0].clone()).ok())
            .collect();
        if parsed.len() == n {
            out.push((
                "signed event: parse (`Event::from_submission`)",
                time(&mut |i| {
                    std::hint::black_box(Event::from_submission(signed[i][0].clone()).ok());
                }),
            ));
            let now = chrono::Utc::now();
            out.push((
                "signed event: verify + grants + freshness (`TrustPolicy::admit`)",
                time(&mut |i| {
                    let mut ev = parsed[i].clone();
                    std::hint::black_box(policy.admit(&mut ev, now).is_ok());
                }),
            ));
            out.push((
                "signed event: countersign (`sign::sign`)",
                time(&mut |i| {
                    let mut body = parsed[i].body.clone();
                    std::hint::black_box(sign::sign(&mut body, &countersign).is_ok());
                }),
            ));
            out.push((
                "signed event: canonical JSON for publishing (`canonical::to_vec`)",
                time(&mut |i| {
                    std::hint::black_box(canonical::to_vec(&parsed[i].body).ok());
                }),
            ));
            // The Ed25519 floor: the curve and hash work alone, on the bytes the relay signs.
            use ed25519_dalek::Signer as _;
            let messages: Vec<Vec<u8>> = parsed
                .iter()
                .filter_map(|e| sign::signed_bytes(&e.body).ok())
                .collect();
            let (sk, vk) = (&countersign.key, countersign.verify_key().key);
            let sigs: Vec<ed25519_dalek::Signature> = messages.iter().map(|m| sk.sign(m)).collect();
            if messages.len() == n {
                let sign_us = time(&mut |i| {
                    std::hint::black_box(sk.sign(&messages[i]));
                });
                let verify_us = time(&mut |i| {
                    std::hint::black_box(vk.verify_strict(&messages[i], &sigs[i]).is_ok());
                });
                let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                let keys = vec![vk; n];
                let batch_us = time(&mut |i| {
                    if i % BATCH == 0 {
                        let end = (i + BATCH).min(n);
                        std::hint::black_box(
                            ed25519_dalek::verify_batch(
                                &refs[i..end],
                                &sigs[i..end],
                                &keys[i..end],
                            )
                            .is_ok(),
                        );
                    }
                });
                out.push((
                    "Ed25519 alone: sign one event (`SigningKey::sign`)",
                    sign_us,
                ));
                out.push((
                    "Ed25519 alone: verify one event (`verify_strict`)",
                    verify_us,
                ));
                out.push((
                    "Ed25519 alone: verify one event within a batch of 32 (`verify_batch`)",
                    batch_us,
                ));
                (cal.sign_us, cal.verify_us, cal.batch_verify_us) =
                    (Some(sign_us), Some(verify_us), Some(batch_us));
            }
            // What a relay worker does per event: batches of 32 parsed, verified in one
            // batch, granted, countersigned over the same bytes, serialized with a gap.
            let gate = hark::admit::Gate::new(policy.clone(), false, 1 << 20);
            let now = chrono::Utc::now();
            out.push((
                "relay worker: parse + batch verify + grants + countersign + JSON (`Gate::check_submissions`, batches of 32)",
                time(&mut |i| {
                    if i % BATCH == 0 {
                        let end = (i + BATCH).min(n);
                        let batch = signed[i..end].iter().map(|f| (f[0].clone(), now)).collect();
                        for (mut ev, mut claims) in gate.check_submissions(batch).into_iter().flatten() {
                            if let Ok(m) = claims.message(&ev.body) {
                                let m = m.to_vec();
                                let _ = sign::sign_message(&mut ev.body, &countersign, &m);
                            }
                            std::hint::black_box(canonical::Gapped::new(&ev.body, "unsigned").ok());
                        }
                    }
                }),
            ));
        }
    }
    cal.steps = out;
    cal
}

fn setup(settings: Settings) -> Result<Rig, String> {
    let tmp = tempfile::Builder::new()
        .prefix("hark-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let keys = bench_keys(tmp.path())?;
    let config = tmp.path().join("hark.yaml");
    std::fs::write(&config, "").map_err(|e| e.to_string())?;

    let t = Instant::now();
    let pass_load: Vec<Frames> = (0..settings.pass_count)
        .map(|i| fedmsg_load(PASS_TOPIC, i, settings.size, "").frames)
        .collect();
    let signed_load: Vec<Frames> = if settings.cases.iter().any(|c| c.signed()) {
        (0..settings.signed_count)
            .map(|i| signed_load(SIGNED_TAG, i, settings.size, &keys.publisher).map(|m| m.frames))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    eprintln!(
        "built {} fedmsg and {} signed messages in {:.1?}",
        pass_load.len(),
        signed_load.len(),
        t.elapsed()
    );
    let anchor = find_anchor(&bench_venvs(&settings.root), "fedmsg-relay");
    let fsync_floor = settings.cases.iter().any(|c| c.journal()).then(|| {
        fsync_floor(tmp.path(), &pass_load).unwrap_or_else(|e| format!("Floor: not measured: {e}"))
    });
    Ok(Rig {
        settings,
        tmp,
        config,
        keys,
        pass_load: Arc::new(pass_load),
        signed_load: Arc::new(signed_load),
        anchor,
        fsync_floor,
    })
}

/// What the journal's disk costs before any socket is involved: wall time of one commit
/// (`synchronous=FULL`, so one fsync of the WAL) holding one event, and per event when a
/// poll round's burst of 100 shares a commit, as the relay does under load.
fn fsync_floor(dir: &std::path::Path, load: &[Frames]) -> Result<String, String> {
    use hark::journal::{Journal, NewEntry, Retention};
    let path = dir.join("floor.db");
    let mut journal = Journal::open(&path, Retention::default()).map_err(|e| e.to_string())?;
    let entry = |i: usize| NewEntry {
        frames: &load[i % load.len()],
        topic: PASS_TOPIC,
        uuid: "",
        received_ms: 0,
    };
    let mut single = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        journal
            .append_batch(&[entry(i)])
            .map_err(|e| e.to_string())?;
        single.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut batched = Vec::new();
    for round in 0..50 {
        let burst: Vec<NewEntry<'_>> = (0..100).map(|i| entry(round * 100 + i)).collect();
        let t = Instant::now();
        journal.append_batch(&burst).map_err(|e| e.to_string())?;
        batched.push(t.elapsed().as_secs_f64() * 1e6 / 100.0);
    }
    drop(journal);
    remove_sqlite(&path);
    Ok(format!(
        "Floor: one journal commit with synchronous=FULL (one fsync of the WAL on this disk) takes {:.0} µs (median of 200); with a burst of 100 events per commit it is {:.1} µs per event (median of 50).",
        median(single).unwrap_or(0.0),
        median(batched).unwrap_or(0.0)
    ))
}

fn main() {
    let rig = setup(Settings::from_env())
        .unwrap_or_else(|e| exit_with(&format!("cannot set up the benchmark: {e}")));
    let s = &rig.settings;
    let cases: Vec<Case> = s
        .cases
        .iter()
        .copied()
        .filter(|c| *c != Case::FedmsgPass || rig.anchor.is_ok())
        .collect();
    let mut results: Vec<(Case, usize, Result<RunOut, String>)> = Vec::new();
    // Interleave cases round by round so that slow drifts of a noisy machine hit all alike.
    for round in 1..=s.runs {
        for &case in &cases {
            let out = rig.run(case);
            match &out {
                Ok(r) => eprintln!(
                    "round {round} {:<7} {:>9} msg/s  loss {:.2}%  ({} / {} in {:.2}s) {}",
                    case.key(),
                    thousands(r.rate()),
                    r.loss(),
                    r.received,
                    r.sent,
                    r.secs,
                    r.note
                ),
                Err(e) => eprintln!("round {round} {:<7} FAILED: {e}", case.key()),
            }
            results.push((case, round, out));
        }
    }
    if s.smoke {
        let bad: Vec<String> = results
            .iter()
            .filter_map(|(case, _, r)| match r {
                Err(e) => Some(format!("{}: {e}", case.key())),
                Ok(r) if r.note.contains("NOT") || r.note.contains("unrecognised") => {
                    Some(format!("{}: {}", case.key(), r.note))
                }
                Ok(r) if r.received == 0 => Some(format!("{}: nothing arrived", case.key())),
                Ok(_) => None,
            })
            .collect();
        println!(
            "relay_throughput smoke test (run `cargo bench --bench relay_throughput` to measure): {}",
            if bad.is_empty() { "ok" } else { "FAILED" }
        );
        for b in &bad {
            println!("  {b}");
        }
        // process::exit skips destructors: remove the run directory first.
        drop(rig);
        std::process::exit(i32::from(!bad.is_empty()));
    }
    let calibration = calibrate(&rig);
    report(&rig, &cases, &results, &calibration);
}

/// The runs of `case` that succeeded.
fn successful(results: &[(Case, usize, Result<RunOut, String>)], case: Case) -> Vec<&RunOut> {
    results
        .iter()
        .filter(|(c, _, _)| *c == case)
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .collect()
}

/// Each goal of issues 14 (item 4: the relay near the machine's limits) and 9 (the
/// journal's cost) as measured in this run, next to its target. Ratios between cases are
/// medians of the per-round ratios; the floors are this run's.
fn goals(
    rig: &Rig,
    results: &[(Case, usize, Result<RunOut, String>)],
    cal: &Calibration,
    per_round: &dyn Fn(Case, Case) -> Vec<f64>,
) {
    let ok = |case: Case| successful(results, case);
    let med = |xs: Vec<f64>| median(xs).filter(|x| x.is_finite());
    let met = |ok: bool| if ok { "**met**" } else { "not met" };
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut ratio_row = |what: &str,
                         value: Option<f64>,
                         show: &dyn Fn(f64) -> String,
                         target: &str,
                         pass: &dyn Fn(f64) -> bool| {
        if let Some(v) = value {
            rows.push([what.into(), show(v), target.into(), met(pass(v)).into()]);
        }
    };
    let pct = |r: f64| format!("{:.0} %", 100.0 * r);
    let times = |r: f64| format!("{r:.1}×");
    ratio_row(
        "pass-through msg/s ÷ generator ceiling (same round)",
        med(per_round(Case::HarkPass, Case::Ceiling)),
        &pct,
        "≥ 50 %",
        &|r| r >= 0.5,
    );
    ratio_row(
        "pass-through msg/s ÷ fedmsg-relay (same round)",
        med(per_round(Case::HarkPass, Case::FedmsgPass)),
        &times,
        "≥ 25×",
        &|r| r >= 25.0,
    );
    ratio_row(
        "relay CPU per pass-through message, µs",
        med(ok(Case::HarkPass)
            .iter()
            .filter_map(|r| r.cpu_us_per_msg())
            .collect()),
        &|c| format!("{c:.2}"),
        "≤ 4",
        &|c| c <= 4.0,
    );
    let signed = med(ok(Case::HarkSigned).iter().map(|r| r.rate()).collect());
    if let (Some(rate), Some(sign), Some(verify)) = (signed, cal.sign_us, cal.verify_us) {
        let floor = 2.0 * 1e6 / (sign + verify);
        ratio_row(
            &format!(
                "verify + countersign ev/s ÷ what 2 cores can do at this run's Ed25519 cost (sign {sign:.1} + verify {verify:.1} µs: {} ev/s)",
                thousands(floor)
            ),
            Some(rate / floor),
            &pct,
            "≥ 80 %",
            &|r| r >= 0.8,
        );
        if let Some(batch) = cal.batch_verify_us {
            let floor = 2.0 * 1e6 / (sign + batch);
            ratio_row(
                &format!(
                    "same, against the batch-verification floor (sign {sign:.1} + verify in a batch {batch:.1} µs: {} ev/s)",
                    thousands(floor)
                ),
                Some(rate / floor),
                &pct,
                "(stricter form of the same goal)",
                &|r| r >= 0.8,
            );
        }
    }
    ratio_row(
        "pass-through with the journal ÷ without (same round)",
        med(per_round(Case::HarkPassJournal, Case::HarkPass)),
        &|r| format!("{} ({:+.0} %)", pct(r), 100.0 * (r - 1.0)),
        "≥ 80 % (the journal costs at most a fifth)",
        &|r| r >= 0.8,
    );
    ratio_row(
        "pass-through with the journal ÷ fedmsg-relay (same round)",
        med(per_round(Case::HarkPassJournal, Case::FedmsgPass)),
        &times,
        "≥ 10×",
        &|r| r >= 10.0,
    );
    ratio_row(
        "verify + countersign with the journal ÷ without (same round)",
        med(per_round(Case::HarkSignedJournal, Case::HarkSigned)),
        &|r| format!("{} ({:+.0} %)", pct(r), 100.0 * (r - 1.0)),
        "≥ 80 %",
        &|r| r >= 0.8,
    );
    let cpu = |case: Case| med(ok(case).iter().filter_map(|r| r.cpu_us_per_msg()).collect());
    if let (Some(one), Some(many)) = (cpu(Case::HarkPass), cpu(Case::HarkFanout)) {
        ratio_row(
            &format!(
                "relay CPU per message with {} subscribers ÷ with 1 ({many:.2} vs {one:.2} µs)",
                rig.settings.subscribers
            ),
            Some(many / one),
            &times,
            "flat (≤ 1.2×)",
            &|r| r <= 1.2,
        );
    }
    if rows.is_empty() {
        return;
    }
    println!("## Goals (issue 14 item 4 and 6, issue 9), this run\n");
    println!("| goal | measured | target | |");
    println!("|---|---:|---|---|");
    for [what, value, target, verdict] in rows {
        println!("| {what} | {value} | {target} | {verdict} |");
    }
    println!();
}

fn report(
    rig: &Rig,
    cases: &[Case],
    results: &[(Case, usize, Result<RunOut, String>)],
    calibration: &Calibration,
) {
    let s = &rig.settings;
    let ok = |case: Case| successful(results, case);
    let med_rate = |case: Case| median(ok(case).iter().map(|r| r.rate()).collect());
    let med_loss = |case: Case| median(ok(case).iter().map(|r| r.loss()).collect());
    let med_cpu = |case: Case| median(ok(case).iter().filter_map(|r| r.cpu_us_per_msg()).collect());
    let anchor = med_rate(Case::FedmsgPass);

    println!("# hark relay throughput\n");
    for line in machine() {
        println!("- {line}");
    }
    println!("- hark binary: {}", s.hark_bin.display());
    match &rig.anchor {
        Ok(venv) => println!(
            "- anchor: {} ({})",
            venv.join("bin/fedmsg-relay").display(),
            anchor_versions(venv, &["fedmsg", "moksha.hub", "Twisted", "pyzmq"])
                .unwrap_or_else(|| "versions unknown".into())
        ),
        Err(why) => println!("- anchor: **not measured**: {why}"),
    }
    println!(
        "- {} runs per case, interleaved; {} fedmsg messages per pass-through run, {} signed events per signed run, {} bytes of JSON each; {} PUB generator thread(s), {} DEALER thread(s)",
        s.runs, s.pass_count, s.signed_count, s.size, s.generators, s.senders
    );
    println!();
    let anchor_cpu = med_cpu(Case::FedmsgPass);
    let range = |case: Case| {
        let rates: Vec<f64> = ok(case).iter().map(|r| r.rate()).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        if rates.is_empty() {
            "—".to_string()
        } else {
            format!("{}–{}", thousands(lo), thousands(hi))
        }
    };
    println!("| case | msg/s (median) | range | loss (median) | relay CPU µs/msg | msg/s vs fedmsg-relay | CPU/msg vs fedmsg-relay |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &case in cases {
        let rate = med_rate(case);
        let cpu = med_cpu(case).filter(|_| case != Case::Ceiling);
        let runs = ok(case).len();
        let (ratio, cpu_ratio) = match case {
            Case::FedmsgPass if rate.is_some() => {
                ("1.0 (anchor)".to_string(), "1.0 (anchor)".to_string())
            }
            Case::HarkPass | Case::HarkPassJournal | Case::HarkFanout => (
                rate.zip(anchor)
                    .map_or("—".into(), |(r, a)| format!("**{:.1}×**", r / a)),
                cpu.zip(anchor_cpu)
                    .map_or("—".into(), |(c, a)| format!("{:.1}× less", a / c)),
            ),
            Case::HarkSigned | Case::HarkSignedJournal => (
                rate.map_or("—".into(), |r| {
                    format!("({:.0}× the cited 33 msg/s †)", r / 33.0)
                }),
                "—".into(),
            ),
            Case::Ceiling | Case::FedmsgPass => ("—".into(), "—".into()),
        };
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} |",
            case.label(),
            if runs < s.runs {
                format!(" ({runs}/{} runs succeeded)", s.runs)
            } else {
                String::new()
            },
            rate.map_or("—".into(), thousands),
            range(case),
            med_loss(case).map_or("—".into(), |l| format!("{l:.2} %")),
            cpu.map_or("—".into(), |c| format!("{c:.1}")),
            ratio,
            cpu_ratio
        );
    }
    if let Err(why) = &rig.anchor {
        println!(
            "| fedmsg-relay (Python anchor) | not measured: {} | | | | | |",
            why.replace('|', "\\|")
        );
    }
    if cases.iter().any(|c| c.signed()) {
        println!("| † fedmsg-signing-relay (Python, X.509/RSA) | 33, cited from a reference run on a similar 2-core VM, not measured here | | | | | |");
    }
    println!();
    // Rounds interleave the cases, so each round's runs share conditions: ratios are taken
    // within a round, then their median.
    let per_round = |a: Case, b: Case| -> Vec<f64> {
        (1..=s.runs)
            .filter_map(|round| {
                let get = |case: Case| {
                    results
                        .iter()
                        .find(|(c, r, _)| *c == case && *r == round)
                        .and_then(|(_, _, o)| o.as_ref().ok())
                        .map(RunOut::rate)
                };
                get(a)
                    .zip(get(b))
                    .filter(|(_, y)| *y > 0.0)
                    .map(|(x, y)| x / y)
            })
            .collect()
    };
    let show = |what: &str, ratios: Vec<f64>, unit: &dyn Fn(f64) -> String| {
        if !ratios.is_empty() {
            println!(
                "{what} per round: {} (median {}).",
                ratios
                    .iter()
                    .map(|r| unit(*r))
                    .collect::<Vec<_>>()
                    .join(", "),
                unit(median(ratios.clone()).unwrap_or(0.0))
            );
        }
    };
    let times = |r: f64| format!("{r:.1}×");
    let cost = |r: f64| format!("{:+.0} %", 100.0 * (r - 1.0));
    show(
        "Pass-through ratio hark / fedmsg-relay",
        per_round(Case::HarkPass, Case::FedmsgPass),
        &times,
    );
    show(
        "Pass-through ratio hark with journal / fedmsg-relay",
        per_round(Case::HarkPassJournal, Case::FedmsgPass),
        &times,
    );
    show(
        "Journal's effect on pass-through msg/s",
        per_round(Case::HarkPassJournal, Case::HarkPass),
        &cost,
    );
    show(
        "Journal's effect on verify + countersign msg/s",
        per_round(Case::HarkSignedJournal, Case::HarkSigned),
        &cost,
    );
    if let Some(floor) = &rig.fsync_floor {
        println!("{floor}");
    }
    println!();
    goals(rig, results, calibration, &per_round);
    println!("Throughput = messages received by the sink / time from the first send to the last receive.");
    println!("Relay CPU = user + system time of the relay process over the same interval, per message received.");
    println!();
    println!("## Raw runs\n");
    println!("| case | round | sent | received | loss | seconds | msg/s | offered msg/s | relay CPU by thread (s) | rig CPU (s) | machine busy | longest gap (ms) | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|");
    for (case, round, out) in results {
        match out {
            Ok(r) => {
                let cpu = r
                    .cpu
                    .iter()
                    .map(|(n, t)| format!("{n} {:.2}", *t as f64 / 1e9))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut note = r.note.clone();
                if let Some(a) = &r.acks {
                    note = format!(
                        "acks: {} accepted, {} duplicate, {} refused{}{}{}",
                        a.accepted,
                        a.duplicate,
                        a.refused,
                        a.first_refusal
                            .as_ref()
                            .map(|f| format!(" (first: {f})"))
                            .unwrap_or_default(),
                        if note.is_empty() { "" } else { "; " },
                        note
                    );
                }
                println!(
                    "| {} | {round} | {} | {} | {:.2} % | {:.2} | {} | {} | {} | {:.2} | {:.0} % | {} | {} |",
                    case.key(),
                    r.sent,
                    r.received,
                    r.loss(),
                    r.secs,
                    thousands(r.rate()),
                    thousands(r.offered),
                    if cpu.is_empty() { "—".into() } else { cpu },
                    r.rig_cpu as f64 / 1e9,
                    r.machine_busy,
                    r.max_gap.as_millis(),
                    note.replace('|', "\\|")
                );
            }
            Err(e) => println!(
                "| {} | {round} | | | | | | | | | | | FAILED: {} |",
                case.key(),
                e.replace('\n', " ").replace('|', "\\|")
            ),
        }
    }
    if !calibration.steps.is_empty() {
        println!();
        println!(
            "## In-process CPU cost per message (one thread, no sockets, median of 5 × 2000)\n"
        );
        println!("| step | CPU µs per message |");
        println!("|---|---:|");
        for (step, us) in &calibration.steps {
            println!("| {step} | {us:.1} |");
        }
    }
}
