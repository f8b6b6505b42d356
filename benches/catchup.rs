//! Catch-up benchmark (`harness = false`): `cargo bench --bench catchup`.
//!
//! How fast a trigger that was down catches up through a relay's replay socket. Each run:
//!
//! 1. a `hark relay` with a fresh journal and a `hark trigger` connected to it; one warm-up
//!    event runs, so the trigger has persisted its place in the relay's stream;
//! 2. the trigger stops (SIGTERM) and N signed events (100,000) are submitted to the relay;
//! 3. the trigger starts again; it learns the relay's head from a heartbeat, fetches the N
//!    events from the replay socket, verifies each signature, matches them against a
//!    coalescing rule and files them in its state store. The clock runs from the first
//!    replayed frame (`hark_replayed_frames_total`) until `hark_rule_matches_total` counts
//!    all N, read from its metrics endpoint; the wait before it (start-up, and the first
//!    heartbeat, every second here) is reported apart.
//!
//! The floors, measured in the same run: the relay streaming the same range to a bare
//! DEALER that verifies nothing (what the replay socket gives at most), and the in-process
//! CPU cost of admitting one event (Ed25519 verification, grants, freshness). There is no
//! anchor: fedmsg never made replay work, so nothing else catches up at all.
//!
//! Nothing here asserts a speed; under `cargo test` (no `--bench`) one small run checks
//! that every event is caught up. Every wait is bounded and every child is killed when its
//! guard drops. Knobs (environment): `HARK_BENCH_RUNS` (3), `HARK_BENCH_CATCHUP_COUNT`
//! (100000), `HARK_BENCH_SIZE` (500 bytes of JSON per event), `HARK_BENCH_RUN_TIMEOUT`
//! (300 s), `HARK_BIN` (else the `hark` binary cargo built for this bench).

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::messages::{signed_load, Frames};
use support::net::{try_free_endpoint, try_free_port, try_http};
use support::{
    bench_hark_bin, bench_keys, env_num, exit_with, machine_lines, median, process_cpu_ns,
    remove_sqlite, thousands, thread_self_cpu, BenchKeys, LoggedChild, PUBLISHER,
};

const TOPIC: &str = "_lk.bench.catchup";
const WARM_TOPIC: &str = "_lk.bench.catchup.warmup";
/// How long a daemon may take to start, and the warm-up event to run.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Every event matches; a coalescing rule files them without running a command per event,
/// so the figure is catch-up (fetch, verify, match, store), not process spawning.
const RULES: &str = r#"
rules:
  - name: catchup
    match: {topic: "_lk.bench.**"}
    coalesce: {quiet: 5s, max_delay: 10m}
    run: {command: [/bin/true], stdin: none}
"#;

struct Settings {
    smoke: bool,
    runs: usize,
    count: usize,
    size: usize,
    run_timeout: Duration,
    hark_bin: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        // `cargo bench` passes --bench; under `cargo test` this is a smoke test.
        let smoke = !std::env::args().any(|a| a == "--bench");
        Settings {
            smoke,
            runs: if smoke {
                1
            } else {
                env_num("HARK_BENCH_RUNS", 3).max(1)
            },
            count: if smoke {
                500
            } else {
                env_num("HARK_BENCH_CATCHUP_COUNT", 100_000).max(1)
            },
            size: env_num("HARK_BENCH_SIZE", 500).max(300),
            run_timeout: Duration::from_secs(env_num("HARK_BENCH_RUN_TIMEOUT", 300).max(10) as u64),
            hark_bin: bench_hark_bin(),
        }
    }
}

struct Rig {
    s: Settings,
    tmp: tempfile::TempDir,
    keys: BenchKeys,
    config: PathBuf,
    rules: PathBuf,
    load: Vec<Frames>,
}

/// One run's figures.
struct RunOut {
    /// Submitting the N events to the relay (journal on), for comparison.
    publish_secs: f64,
    /// Trigger start until its first replayed frame.
    start_secs: f64,
    /// First replayed frame until all N were matched and filed.
    catchup_secs: f64,
    /// Trigger CPU over its whole run (start-up included), nanoseconds.
    trigger_cpu_ns: u64,
    /// Relay CPU while the trigger caught up, nanoseconds.
    relay_cpu_ns: u64,
    /// The bare replay stream of the same range.
    raw_secs: f64,
}

impl RunOut {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.catchup_secs.max(1e-9)
    }
}

/// Sum of every sample of `name` on a Prometheus text endpoint; `None` if unreachable.
fn scrape(addr: &str, name: &str) -> Option<f64> {
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let text = try_http(addr, &request, Duration::from_secs(2)).ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Bounded poll of `name` on `addr` until it reaches `want`.
fn wait_metric(
    addr: &str,
    name: &str,
    want: f64,
    limit: Duration,
    daemon: &mut LoggedChild,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if scrape(addr, name).is_some_and(|v| v >= want) {
            return Ok(());
        }
        if let Some(why) = daemon.exited() {
            return Err(why);
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{name} did not reach {want} within {limit:?} (now {:?}); {} output ends with:\n{}",
                scrape(addr, name),
                daemon.what(),
                daemon.log_tail(15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn zerr(what: &'static str) -> impl Fn(zmq::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Submit every frame on one DEALER, pipelined; the count acked `accepted`.
fn submit_all(endpoint: &str, load: &[Frames], limit: Duration) -> Result<usize, String> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::DEALER).map_err(zerr("dealer"))?;
    sock.set_sndhwm(0).map_err(zerr("sndhwm"))?;
    sock.set_rcvhwm(0).map_err(zerr("rcvhwm"))?;
    sock.set_linger(0).map_err(zerr("linger"))?;
    sock.set_sndtimeo(5_000).map_err(zerr("sndtimeo"))?;
    sock.connect(endpoint).map_err(zerr("connect"))?;
    let mut acks = Acks::default();
    for frames in load {
        sock.send_multipart(frames, 0).map_err(zerr("send"))?;
        acks.read(&sock, 0)?;
    }
    let start = Instant::now();
    while acks.answered < load.len() && start.elapsed() < limit {
        acks.read(&sock, 100)?;
    }
    if acks.answered < load.len() {
        return Err(format!(
            "{} of {} submissions unanswered after {limit:?}",
            load.len() - acks.answered,
            load.len()
        ));
    }
    Ok(acks.accepted)
}

#[derive(Default)]
struct Acks {
    answered: usize,
    accepted: usize,
}

impl Acks {
    /// Count the acks waiting on `sock`; with `wait_ms` > 0, wait that long for one.
    fn read(&mut self, sock: &zmq::Socket, wait_ms: i64) -> Result<(), String> {
        while sock.poll(zmq::POLLIN, wait_ms).map_err(zerr("poll"))? > 0 {
            let frame = sock.recv_bytes(0).map_err(zerr("recv"))?;
            self.answered += 1;
            if String::from_utf8_lossy(&frame).contains(r#""status":"accepted""#) {
                self.accepted += 1;
            }
            if wait_ms > 0 {
                break;
            }
        }
        Ok(())
    }
}

/// Read the whole journal from the replay socket as fast as the relay serves it, checking
/// nothing: the ceiling of any subscriber's catch-up. Returns the events received.
fn raw_replay(endpoint: &str, limit: Duration) -> Result<usize, String> {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::DEALER).map_err(zerr("dealer"))?;
    sock.set_rcvhwm(0).map_err(zerr("rcvhwm"))?;
    sock.set_linger(0).map_err(zerr("linger"))?;
    sock.connect(endpoint).map_err(zerr("connect"))?;
    let deadline = Instant::now() + limit;
    let mut request = json!({"from_ms": 0, "max_chunk": 512});
    let mut events = 0;
    loop {
        sock.send(request.to_string().as_bytes(), 0)
            .map_err(zerr("send"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || sock
                    .poll(zmq::POLLIN, left.as_millis() as i64)
                    .map_err(zerr("poll"))?
                    == 0
            {
                return Err(format!("the replay stream stalled after {events} events"));
            }
            let msg = sock.recv_multipart(0).map_err(zerr("recv"))?;
            let header: Value = msg
                .first()
                .and_then(|h| serde_json::from_slice(h).ok())
                .ok_or("a replay reply without a JSON header")?;
            match header["status"].as_str() {
                Some("event") => events += 1,
                Some("more") => {
                    request = json!({
                        "epoch": header["epoch"],
                        "from_seq": header["next_seq"],
                        "max_chunk": 512,
                    });
                    break;
                }
                Some("end") => return Ok(events),
                _ => return Err(format!("replay answered {header}")),
            }
        }
    }
}

impl Rig {
    fn relay(&self, submit: &str, publish: &str, replay: &str) -> Result<LoggedChild, String> {
        let mut cmd = self
            .keys
            .relay_command(&self.s.hark_bin, &self.config, submit, publish);
        let journal = self.tmp.path().join("journal.db");
        remove_sqlite(&journal);
        cmd.arg("--journal")
            .arg(&journal)
            .args(["--replay", replay])
            .env("HARK_LOG", "info");
        let mut relay = LoggedChild::spawn(cmd, self.tmp.path().join("relay.log"), "hark relay")?;
        relay.wait_for_output("relay ready", START_TIMEOUT)?;
        Ok(relay)
    }

    fn trigger(
        &self,
        publish: &str,
        replay: &str,
        metrics: &str,
        log: &str,
    ) -> Result<LoggedChild, String> {
        let mut cmd = Command::new(&self.s.hark_bin);
        cmd.arg("trigger")
            .arg("--config")
            .arg(&self.config)
            .args([
                "--connect",
                publish,
                "--replay",
                replay,
                "--metrics",
                metrics,
            ])
            .args(["--grant", &format!("{PUBLISHER}=_lk.bench.**")])
            .arg("--rules")
            .arg(&self.rules)
            .arg("--state")
            .arg(self.tmp.path().join("state.db"))
            .arg("--trusted")
            .arg(&self.keys.trusted)
            .env("HARK_LOG", "info")
            .env_remove("JOURNAL_STREAM");
        LoggedChild::spawn(cmd, self.tmp.path().join(log), "hark trigger")
    }

    fn run(&self) -> Result<RunOut, String> {
        let n = self.load.len();
        let (submit, publish, replay) = (
            try_free_endpoint()?,
            try_free_endpoint()?,
            try_free_endpoint()?,
        );
        let metrics = format!("127.0.0.1:{}", try_free_port()?);
        let state = self.tmp.path().join("state.db");
        remove_sqlite(&state);
        let mut relay = self.relay(&submit, &publish, &replay)?;

        // The trigger learns where it is in the relay's stream from one event.
        let mut trigger = self.trigger(&publish, &replay, &metrics, "trigger-1.log")?;
        trigger.wait_for_output("trigger ready", START_TIMEOUT)?;
        let warm = signed_load(WARM_TOPIC, 0, 300, &self.keys.publisher)?.frames;
        if submit_all(&submit, &[warm], START_TIMEOUT)? != 1 {
            return Err("the relay did not accept the warm-up event".into());
        }
        wait_metric(
            &metrics,
            "hark_rule_matches_total",
            1.0,
            START_TIMEOUT,
            &mut trigger,
        )?;
        if trigger.terminate(START_TIMEOUT).is_none() {
            return Err("the trigger did not stop on SIGTERM".into());
        }

        // While it is down, the relay journals N events.
        let t = Instant::now();
        let accepted = submit_all(&submit, &self.load, self.s.run_timeout)?;
        let publish_secs = t.elapsed().as_secs_f64();
        if accepted != n {
            return Err(format!("the relay accepted {accepted} of {n} events"));
        }

        // Back up: it catches up through replay.
        let relay_before = process_cpu_ns(&relay.pid().to_string());
        let t = Instant::now();
        let mut trigger = self.trigger(&publish, &replay, &metrics, "trigger-2.log")?;
        wait_metric(
            &metrics,
            "hark_replayed_frames_total",
            1.0,
            START_TIMEOUT,
            &mut trigger,
        )?;
        let start_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        wait_metric(
            &metrics,
            "hark_rule_matches_total",
            n as f64,
            self.s.run_timeout,
            &mut trigger,
        )?;
        let catchup_secs = t.elapsed().as_secs_f64();
        let trigger_cpu_ns = process_cpu_ns(&trigger.pid().to_string());
        let relay_cpu_ns = process_cpu_ns(&relay.pid().to_string()).saturating_sub(relay_before);
        drop(trigger);

        let t = Instant::now();
        let got = raw_replay(&replay, self.s.run_timeout)?;
        let raw_secs = t.elapsed().as_secs_f64();
        if got != n + 1 {
            return Err(format!("the raw replay gave {got} of {} events", n + 1));
        }
        if let Some(why) = relay.exited() {
            return Err(why);
        }
        Ok(RunOut {
            publish_secs,
            start_secs,
            catchup_secs,
            trigger_cpu_ns,
            relay_cpu_ns,
            raw_secs,
        })
    }
}

/// CPU µs of one thread to admit one signed event (verify, grants, freshness), median of 5.
fn admit_floor(keys: &BenchKeys, load: &[Frames]) -> Option<f64> {
    use hark::admit::TrustPolicy;
    use hark::config::TrustConfig;
    use hark::event::keys::Keyring;
    use hark::event::Event;
    let mut ring = Keyring::default();
    ring.insert(keys.publisher.verify_key());
    let grants = vec![(PUBLISHER.to_string(), vec!["_lk.bench.**".to_string()])];
    let policy = TrustPolicy::new(ring, &grants, &TrustConfig::default()).ok()?;
    let events: Vec<Event> = load
        .iter()
        .take(2_000)
        .filter_map(|f| Event::from_submission(f[0].clone()).ok())
        .collect();
    let now = chrono::Utc::now();
    let passes: Vec<f64> = (0..5)
        .map(|_| {
            let t = thread_self_cpu();
            for e in &events {
                let mut e = e.clone();
                std::hint::black_box(policy.admit(&mut e, now).is_ok());
            }
            thread_self_cpu().saturating_sub(t) as f64 / 1000.0 / events.len().max(1) as f64
        })
        .collect();
    median(passes)
}

fn setup(s: Settings) -> Result<Rig, String> {
    let tmp = tempfile::Builder::new()
        .prefix("hark-bench-catchup-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let keys = bench_keys(tmp.path())?;
    let config = tmp.path().join("hark.yaml");
    // Heartbeats every second, so that the wait for the first one does not dominate.
    std::fs::write(&config, "relay:\n  heartbeat: 1s\n").map_err(|e| e.to_string())?;
    let rules = tmp.path().join("rules.d");
    std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
    std::fs::write(rules.join("50-catchup.yaml"), RULES).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let load = (0..s.count)
        .map(|i| signed_load(TOPIC, i, s.size, &keys.publisher).map(|m| m.frames))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("signed {} events in {:.1?}", load.len(), t.elapsed());
    Ok(Rig {
        s,
        tmp,
        keys,
        config,
        rules,
        load,
    })
}

fn main() {
    let rig = setup(Settings::from_env())
        .unwrap_or_else(|e| exit_with(&format!("cannot set up the benchmark: {e}")));
    let n = rig.load.len();
    let mut runs = Vec::new();
    for round in 1..=rig.s.runs {
        match rig.run() {
            Ok(r) => {
                eprintln!(
                    "round {round}: caught up {n} events in {:.2} s ({} ev/s); raw replay {:.2} s",
                    r.catchup_secs,
                    thousands(r.rate(n)),
                    r.raw_secs
                );
                runs.push(r);
            }
            Err(e) => {
                eprintln!("round {round} FAILED: {e}");
                if rig.s.smoke {
                    exit_with(&format!("catch-up smoke run failed: {e}"));
                }
            }
        }
    }
    if rig.s.smoke {
        println!("catch-up smoke run: {n} events caught up");
        return;
    }
    report(&rig, &runs, admit_floor(&rig.keys, &rig.load));
}

fn report(rig: &Rig, runs: &[RunOut], admit_us: Option<f64>) {
    let n = rig.load.len();
    let med = |f: &dyn Fn(&RunOut) -> f64| median(runs.iter().map(f).collect());
    let show = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("—".into(), f);
    println!("# hark catch-up through replay\n");
    for line in machine_lines() {
        println!("- {line}");
    }
    println!("- hark binary: {}", rig.s.hark_bin.display());
    println!(
        "- {} of {} runs succeeded; {n} signed events of {} bytes of JSON each, journaled by the relay while the trigger was stopped",
        runs.len(),
        rig.s.runs,
        rig.s.size
    );
    println!("- no anchor: fedmsg has no working replay, so no other trigger catches up at all\n");
    println!("| measure | median | range | CPU µs per event |");
    println!("|---|---:|---:|---:|");
    let range = |f: &dyn Fn(&RunOut) -> f64| {
        let xs: Vec<f64> = runs.iter().map(f).collect();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(0.0, f64::max);
        if xs.is_empty() {
            "—".into()
        } else {
            format!("{}–{}", thousands(lo), thousands(hi))
        }
    };
    let per_event = |ns: f64| format!("{:.1}", ns / 1000.0 / n as f64);
    let catchup = |r: &RunOut| r.rate(n);
    println!(
        "| **trigger catch-up**: first replayed frame → all {n} fetched, verified, matched and filed, ev/s | **{}** | {} | trigger {} + relay {} |",
        show(med(&catchup), &thousands),
        range(&catchup),
        show(med(&|r| r.trigger_cpu_ns as f64), &per_event),
        show(med(&|r| r.relay_cpu_ns as f64), &per_event),
    );
    let raw = |r: &RunOut| (n + 1) as f64 / r.raw_secs.max(1e-9);
    println!(
        "| floor: the relay's replay stream to a bare DEALER (verifies nothing), ev/s | {} | {} | — |",
        show(med(&raw), &thousands),
        range(&raw)
    );
    println!(
        "| floor: admitting one event in process (Ed25519 verify + grants + freshness), ev/s on one core | {} | — | {} |",
        show(admit_us.map(|us| 1e6 / us), &thousands),
        show(admit_us, &|us| format!("{us:.1}"))
    );
    let start = |r: &RunOut| r.start_secs;
    println!(
        "| before it: trigger start → first replayed frame (start-up, first heartbeat), s | {} | — | — |",
        show(med(&start), &|s| format!("{s:.2}"))
    );
    let publish = |r: &RunOut| n as f64 / r.publish_secs.max(1e-9);
    println!(
        "| for comparison: submitting them to the relay (verify, countersign, journal), ev/s | {} | {} | — |",
        show(med(&publish), &thousands),
        range(&publish)
    );
    let ratio = med(&|r| r.raw_secs / r.catchup_secs);
    println!();
    println!(
        "Catch-up runs at {} of the replay stream's rate. The trigger's CPU includes its start-up; \
         CPU comes from /proc (10 ms ticks).",
        show(ratio, &|r| format!("{:.0} %", 100.0 * r))
    );
    println!();
    println!("## Raw runs\n");
    println!("| round | publish s | start s | catch-up s | ev/s | trigger CPU s | relay CPU s | raw replay s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} |",
            i + 1,
            r.publish_secs,
            r.start_secs,
            r.catchup_secs,
            thousands(r.rate(n)),
            r.trigger_cpu_ns as f64 / 1e9,
            r.relay_cpu_ns as f64 / 1e9,
            r.raw_secs
        );
    }
}
