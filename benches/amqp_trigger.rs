//! AMQP trigger benchmark (`harness = false`): `cargo bench --bench amqp_trigger`.
//!
//! One real RabbitMQ (Debian's rabbitmq-server, started by tests/support/rabbitmq.rs on
//! loopback with random ports and a node directory of its own, stopped by PID) and three
//! consumers that run one command per message, measured in the same run:
//!
//! - **hark**: `hark trigger --amqp URL` with a rule whose command is the stamp script;
//! - **amqp-consume** (Debian's amqp-tools, the RabbitMQ C client's tool): `amqp-consume
//!   -q QUEUE STAMP FILE`, which pipes each body to a fresh command and acks when it exits;
//! - **fedora-messaging** (`fedora-messaging consume` from `.venv`) with a callback
//!   (tests/peers/fm_spawn.py) that runs the command with the body on stdin.
//!
//! The command is `bench/trigger/stamp` (a bash script that reads the wall clock first,
//! then appends "<uuid> <time>" to a file), the same for all three. Each consumer has a
//! durable queue of its own per run, bound to amq.topic; messages are fedora-messaging's
//! shape (JSON body, `message_id`, its headers), published by this process with publisher
//! confirms over one connection.
//!
//! - **latency**: messages at a steady rate (100/s for 10 s); the figure is command start
//!   minus the wall clock just before the message was published; p50, p99, max. hark runs
//!   it at the rule's default limit 1 (like the other two) and at the generous limit;
//! - **burst**: N messages (1,000) published at once (pipelined confirms); the figure is
//!   commands per second: N ÷ (last command start − first message published), hark again
//!   at limit 1 and 100;
//! - **CPU per message**: each consumer's own CPU and its commands' CPU (reaped children),
//!   and the broker's, from /proc over the measured interval, ÷ messages;
//! - **floors**, in the same rounds: spawning the stamp script from this process (fork,
//!   exec, bash start: what any consumer pays per message), a publish → confirm round
//!   trip, and the broker's publish rate (1,000 pipelined messages to a queue with no
//!   consumer).
//!
//! Rounds interleave the consumers, and the summary gives medians over rounds and
//! per-round ratios. Nothing asserts a speed. Under `cargo test --all-targets` (no
//! `--bench` argument) this is a smoke test: 20 messages to hark (limit 1) and to
//! amqp-consume, a burst of 50 to hark (wide limit), failing only if a message did not run
//! its command exactly once (or a consumer could not be run at all). fedora-messaging is
//! left out of it (its start costs seconds; the broker's boot already takes most of the
//! smoke's time). A machine without rabbitmq-server prints SKIPPED, and a missing
//! amqp-consume or fedora-messaging leaves that consumer out with a note.
//!
//! Knobs (environment): `HARK_BENCH_RUNS` (5), `HARK_BENCH_RATE` (100 messages/s),
//! `HARK_BENCH_LATENCY_SECS` (10), `HARK_BENCH_BURST` (1000), `HARK_BENCH_BURST_LIMIT`
//! (100), `HARK_BENCH_SIZE` (500 bytes of JSON per body), `HARK_BENCH_RUN_TIMEOUT` (120 s),
//! `HARK_BENCH_PYTHON_VENV` (else `.venv`), `HARK_BIN`, `HARK_BENCH_KEEP` (keep the run
//! directories and print where). Positional arguments select cases by key prefix: `lat`,
//! `burst`, `lat-hark`, `burst-fm`, ... (see `Case::key`). docs/benchmarks.md explains the
//! method and gives figures.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use support::rabbitmq::{self, Broker};
use support::{
    env_num, exit_with, load_average, load_line, machine_lines, machine_ticks, median, percentile,
    process_cpu_secs, ratios_text, thousands, tree_cpu_secs, LoggedChild,
};

/// How long a consumer may take to start and run a first warm-up command.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Warm-up messages go out this often until one has run.
const WARM_EVERY: Duration = Duration::from_millis(200);
/// A run ends after this long without a new command (some message never ran).
const IDLE: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Settings and cases

struct Settings {
    smoke: bool,
    runs: usize,
    rate: f64,
    latency_count: usize,
    burst: usize,
    burst_limit: u32,
    size: usize,
    run_timeout: Duration,
    cases: Vec<Case>,
    hark_bin: PathBuf,
    root: PathBuf,
    venv: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let hark_bin = support::bench_hark_bin();
        let venv = std::env::var_os("HARK_BENCH_PYTHON_VENV")
            .map(PathBuf::from)
            .or_else(|| Some(root.join(".venv")))
            .filter(|v| v.join("bin/fedora-messaging").is_file());
        // `cargo bench` passes --bench; `cargo test --all-targets` does not: a smoke test.
        let smoke = !std::env::args().any(|a| a == "--bench");
        if smoke {
            return Settings {
                smoke,
                runs: 1,
                rate: 100.0,
                latency_count: 20,
                burst: 50,
                burst_limit: 100,
                size: 500,
                run_timeout: Duration::from_secs(30),
                cases: vec![
                    Case::new(Kind::Latency, Consumer::Hark),
                    Case::new(Kind::Latency, Consumer::AmqpConsume),
                    Case::new(Kind::Burst, Consumer::HarkWide),
                ],
                hark_bin,
                root,
                venv,
            };
        }
        let cases = support::selected(&Case::ALL, |c| c.key());
        let rate = env_num("HARK_BENCH_RATE", 100).max(1) as f64;
        let secs = env_num("HARK_BENCH_LATENCY_SECS", 10).max(1) as f64;
        Settings {
            smoke,
            runs: env_num("HARK_BENCH_RUNS", 5).max(1),
            rate,
            latency_count: (rate * secs).round() as usize,
            burst: env_num("HARK_BENCH_BURST", 1000).max(1),
            burst_limit: env_num("HARK_BENCH_BURST_LIMIT", 100).clamp(2, 10_000) as u32,
            size: env_num("HARK_BENCH_SIZE", 500).max(100),
            run_timeout: Duration::from_secs(env_num("HARK_BENCH_RUN_TIMEOUT", 120).max(10) as u64),
            cases,
            hark_bin,
            root,
            venv,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Latency,
    Burst,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Consumer {
    /// `hark trigger --amqp`, the rule's default limit: one command at a time.
    Hark,
    /// `hark trigger --amqp`, the rule at the generous limit.
    HarkWide,
    AmqpConsume,
    FedoraMessaging,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Case {
    kind: Kind,
    consumer: Consumer,
}

impl Case {
    const fn new(kind: Kind, consumer: Consumer) -> Case {
        Case { kind, consumer }
    }

    /// Run order within a round: hark next to each anchor, so that a noisy machine's
    /// drifts hit them alike.
    const ALL: [Case; 8] = [
        Case::new(Kind::Latency, Consumer::Hark),
        Case::new(Kind::Latency, Consumer::HarkWide),
        Case::new(Kind::Latency, Consumer::AmqpConsume),
        Case::new(Kind::Latency, Consumer::FedoraMessaging),
        Case::new(Kind::Burst, Consumer::Hark),
        Case::new(Kind::Burst, Consumer::AmqpConsume),
        Case::new(Kind::Burst, Consumer::FedoraMessaging),
        Case::new(Kind::Burst, Consumer::HarkWide),
    ];

    fn key(self) -> &'static str {
        match (self.kind, self.consumer) {
            (Kind::Latency, Consumer::Hark) => "lat-hark-1",
            (Kind::Latency, Consumer::HarkWide) => "lat-hark-n",
            (Kind::Latency, Consumer::AmqpConsume) => "lat-amqp-consume",
            (Kind::Latency, Consumer::FedoraMessaging) => "lat-fm",
            (Kind::Burst, Consumer::Hark) => "burst-hark-1",
            (Kind::Burst, Consumer::HarkWide) => "burst-hark-n",
            (Kind::Burst, Consumer::AmqpConsume) => "burst-amqp-consume",
            (Kind::Burst, Consumer::FedoraMessaging) => "burst-fm",
        }
    }

    fn label(self, s: &Settings) -> String {
        match self.consumer {
            Consumer::Hark => "hark trigger --amqp, limit 1 (default)".into(),
            Consumer::HarkWide => format!("hark trigger --amqp, limit {}", s.burst_limit),
            Consumer::AmqpConsume => "amqp-consume (amqp-tools), serial".into(),
            Consumer::FedoraMessaging => "fedora-messaging consume + callback, serial".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU from /proc

struct CpuMark {
    consumer: Option<(f64, f64)>,
    broker: Option<(f64, f64)>,
    machine: (u64, u64),
}

impl CpuMark {
    fn take(consumer: u32, broker: Option<u32>) -> CpuMark {
        CpuMark {
            consumer: tree_cpu_secs(consumer),
            broker: broker.and_then(process_cpu_secs),
            machine: machine_ticks(),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct CpuUse {
    consumer: f64,
    commands: f64,
    broker: f64,
    machine_busy: f64,
}

fn cpu_use(a: &CpuMark, b: &CpuMark) -> CpuUse {
    let d = |x: Option<(f64, f64)>, y: Option<(f64, f64)>| {
        x.zip(y)
            .map(|(x, y)| ((y.0 - x.0).max(0.0), (y.1 - x.1).max(0.0)))
            .unwrap_or((0.0, 0.0))
    };
    let (consumer, commands) = d(a.consumer, b.consumer);
    let busy = b.machine.0.saturating_sub(a.machine.0) as f64;
    let total = b.machine.1.saturating_sub(a.machine.1) as f64;
    CpuUse {
        consumer,
        commands,
        broker: d(a.broker, b.broker).0,
        machine_busy: if total > 0.0 {
            100.0 * busy / total
        } else {
            0.0
        },
    }
}

fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// The publisher: one connection, publisher confirms

struct Publisher {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: Channel,
    pad: String,
}

impl Publisher {
    fn connect(url: &str, size: usize) -> Result<Publisher, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (conn, channel) = rt.block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .map_err(|e| format!("publisher: connect: {e}"))?;
            let channel = conn
                .create_channel()
                .await
                .map_err(|e| format!("publisher: channel: {e}"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("publisher: confirms: {e}"))?;
            Ok::<_, String>((conn, channel))
        })?;
        // Pad the body to about `size` bytes of JSON, as trigger_latency does.
        let pad = "x".repeat(size.saturating_sub(90));
        Ok(Publisher {
            rt,
            conn,
            channel,
            pad,
        })
    }

    fn properties(id: &str) -> BasicProperties {
        let headers = serde_json::Map::from_iter([
            ("fedora_messaging_schema".to_string(), json!("base.message")),
            ("fedora_messaging_severity".to_string(), json!(20)),
            ("priority".to_string(), json!(0)),
            (
                "sent-at".to_string(),
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)),
            ),
        ]);
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_headers(hark::sources::amqp::json_to_table(&headers))
    }

    fn body(&self, id: &str) -> Vec<u8> {
        json!({"uuid": id, "pad": self.pad})
            .to_string()
            .into_bytes()
    }

    /// Publish one message and wait for its confirm: (sent, confirmed) wall clocks.
    fn one(&self, key: &str, id: &str) -> Result<(f64, f64), String> {
        let body = self.body(id);
        self.rt.block_on(async {
            let props = Self::properties(id);
            let sent = epoch_secs();
            let confirm = self
                .channel
                .basic_publish(
                    "amq.topic".into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .map_err(|e| format!("publish: {e}"))?
                .await
                .map_err(|e| format!("confirm: {e}"))?;
            if matches!(confirm, Confirmation::Nack(_)) {
                return Err("the broker nacked a message".into());
            }
            Ok((sent, epoch_secs()))
        })
    }

    /// Publish `ids` back to back, then await every confirm: each one's send time, and
    /// when the last was confirmed.
    fn burst(&self, key: &str, ids: &[String]) -> Result<(Vec<f64>, f64), String> {
        let bodies: Vec<Vec<u8>> = ids.iter().map(|id| self.body(id)).collect();
        self.rt.block_on(async {
            let mut sent = Vec::with_capacity(ids.len());
            let mut confirms = Vec::with_capacity(ids.len());
            for (id, body) in ids.iter().zip(&bodies) {
                let props = Self::properties(id);
                sent.push(epoch_secs());
                confirms.push(
                    self.channel
                        .basic_publish(
                            "amq.topic".into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            body,
                            props,
                        )
                        .await
                        .map_err(|e| format!("publish: {e}"))?,
                );
            }
            for c in confirms {
                if matches!(
                    c.await.map_err(|e| format!("confirm: {e}"))?,
                    Confirmation::Nack(_)
                ) {
                    return Err("the broker nacked a message".into());
                }
            }
            Ok((sent, epoch_secs()))
        })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.conn.close(200, "bench done".into()));
    }
}

// ---------------------------------------------------------------------------------------
// Stamps

/// "<id> <epoch seconds>" lines the stamp script appended: times per id.
fn read_stamps(path: &Path) -> HashMap<String, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if let (Some(id), Some(t)) = (f.next(), f.next().and_then(|t| t.parse::<f64>().ok())) {
            out.entry(id.to_string()).or_default().push(t);
        }
    }
    out
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// One run

#[derive(Default)]
struct RunOut {
    sent: usize,
    /// Messages whose command ran exactly once.
    once: usize,
    /// Messages whose command did not run / ran more than once.
    missing: usize,
    twice: usize,
    /// Latency runs: publish → command start, ms.
    ms: Vec<f64>,
    /// Burst runs: seconds from the first publish to the last command start.
    drain: Option<f64>,
    /// Burst runs: seconds the publisher took until the last confirm.
    publish_secs: Option<f64>,
    cpu: CpuUse,
    load1: f64,
}

impl RunOut {
    fn pct(&self, q: f64) -> Option<f64> {
        percentile(&self.ms, q)
    }

    fn rate(&self) -> Option<f64> {
        self.drain
            .filter(|d| *d > 0.0)
            .map(|d| self.once as f64 / d)
    }

    fn per_msg_us(&self, secs: f64) -> Option<f64> {
        (self.once > 0).then(|| secs * 1e6 / self.once as f64)
    }
}

/// Fields drop in this order: the broker stops before its directory is removed.
struct Rig {
    broker: Broker,
    settings: Settings,
    tmp: tempfile::TempDir,
    stamp: PathBuf,
    amqp_consume: Result<PathBuf, String>,
    fm: Result<PathBuf, String>,
}

impl Rig {
    fn available(&self, c: Consumer) -> Result<(), String> {
        match c {
            Consumer::Hark | Consumer::HarkWide => Ok(()),
            Consumer::AmqpConsume => self.amqp_consume.as_ref().map(|_| ()).map_err(Clone::clone),
            Consumer::FedoraMessaging => self.fm.as_ref().map(|_| ()).map_err(Clone::clone),
        }
    }

    fn start_consumer(
        &self,
        case: Case,
        dir: &Path,
        queue: &str,
        bind: &str,
        stamps: &Path,
    ) -> Result<LoggedChild, String> {
        let s = &self.settings;
        let url = self.broker.url();
        match case.consumer {
            Consumer::Hark | Consumer::HarkWide => {
                let limit = if case.consumer == Consumer::HarkWide {
                    s.burst_limit
                } else {
                    1
                };
                let rules = dir.join("rules");
                std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
                let q =
                    |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
                std::fs::write(
                    rules.join("bench.yaml"),
                    format!(
                        "rules:\n  - name: bench\n    match: {{topic: \"bench.**\", where: {{broker: bench}}}}\n    run:\n      command: [{}, {}]\n    concurrency: {{limit: {limit}, on_busy: queue}}\n",
                        q(&self.stamp),
                        q(stamps)
                    ),
                )
                .map_err(|e| e.to_string())?;
                let config = dir.join("hark.yaml");
                std::fs::write(&config, "").map_err(|e| e.to_string())?;
                let mut cmd = Command::new(&s.hark_bin);
                cmd.args(["trigger", "--amqp", &url, "--amqp-name", "bench"])
                    .args([
                        "--amqp-queue",
                        queue,
                        "--amqp-bind",
                        &format!("amq.topic={bind}"),
                    ])
                    .args(["--amqp-prefetch", "100"])
                    .arg("--config")
                    .arg(&config)
                    .arg("--rules")
                    .arg(&rules)
                    .arg("--state")
                    .arg(dir.join("state.db"))
                    // hark's default log level: two lines per job, as in production.
                    .env("HARK_LOG", "info")
                    .env_remove("JOURNAL_STREAM");
                LoggedChild::spawn(cmd, dir.join("hark-trigger.log"), "hark trigger")
            }
            Consumer::AmqpConsume => {
                let bin = self.amqp_consume.as_ref().map_err(Clone::clone)?;
                let mut cmd = Command::new(bin);
                cmd.args(["-u", &url, "-q", queue, "-p", "100"])
                    .arg(&self.stamp)
                    .arg(stamps);
                LoggedChild::spawn(cmd, dir.join("amqp-consume.log"), "amqp-consume")
            }
            Consumer::FedoraMessaging => {
                let bin = self.fm.as_ref().map_err(Clone::clone)?;
                let conf = dir.join("fedora-messaging.toml");
                std::fs::write(
                    &conf,
                    format!(
                        "amqp_url = \"{url}\"\n\
                         [client_properties]\napp = \"hark bench\"\n\
                         [qos]\nprefetch_size = 0\nprefetch_count = 100\n\
                         [queues.\"{queue}\"]\ndurable = true\nauto_delete = false\nexclusive = false\narguments = {{}}\n\
                         [[bindings]]\nqueue = \"{queue}\"\nexchange = \"amq.topic\"\nrouting_keys = [\"{bind}\"]\n"
                    ),
                )
                .map_err(|e| e.to_string())?;
                let command = json!([
                    self.stamp.display().to_string(),
                    stamps.display().to_string()
                ]);
                let mut cmd = Command::new(bin);
                cmd.arg("--conf")
                    .arg(&conf)
                    .arg("consume")
                    .arg("--callback-file")
                    .arg(format!(
                        "{}:spawn",
                        s.root.join("tests/peers/fm_spawn.py").display()
                    ))
                    .env("HARK_BENCH_COMMAND", command.to_string())
                    .env_remove("FEDORA_MESSAGING_CONF");
                LoggedChild::spawn(
                    cmd,
                    dir.join("fedora-messaging.log"),
                    "fedora-messaging consume",
                )
            }
        }
    }

    fn run(&self, case: Case, round: usize) -> Result<RunOut, String> {
        let s = &self.settings;
        let name = format!("{}-{round}", case.key());
        let dir = self.tmp.path().join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let stamps = dir.join("stamps.txt");
        // A queue of its own per run: nothing left from another run can reach it.
        let queue = format!("bench-{name}");
        let bind = format!("bench.{name}.#");
        let url = self.broker.url();
        rabbitmq::declare(&url, &queue, &[("amq.topic", &bind)])?;
        let publisher = Publisher::connect(&url, s.size)?;
        let mut consumer = self.start_consumer(case, &dir, &queue, &bind, &stamps)?;

        // Warm up until a command ran, then until every warm-up message has.
        let warm_key = format!("bench.{name}.warm");
        let started = Instant::now();
        let mut warm_sent = 0usize;
        let mut next = Instant::now();
        while count_lines(&stamps) == 0 {
            if let Some(why) = consumer.exited() {
                return Err(why);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "{} ran no warm-up command within {START_TIMEOUT:?}:\n{}",
                    consumer.what(),
                    consumer.log_tail(15)
                ));
            }
            if Instant::now() >= next {
                publisher.one(&warm_key, &format!("warm-{warm_sent}"))?;
                warm_sent += 1;
                next = Instant::now() + WARM_EVERY;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while count_lines(&stamps) < warm_sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));

        let ids: Vec<String> = (0..match case.kind {
            Kind::Latency => s.latency_count,
            Kind::Burst => s.burst,
        })
            .map(|i| format!("{name}-{i:06}"))
            .collect();
        let key = format!("bench.{name}.load");
        let broker_pid = self.broker.beam_pid().and_then(|p| u32::try_from(p).ok());
        let before = CpuMark::take(consumer.pid(), broker_pid);
        let load1 = load_average();
        let (sent, publish_secs) = match case.kind {
            Kind::Latency => {
                let t0 = Instant::now();
                let mut sent = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    let due = t0 + Duration::from_secs_f64(i as f64 / s.rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    sent.push(publisher.one(&key, id)?.0);
                }
                (sent, None)
            }
            Kind::Burst => {
                let (sent, confirmed) = publisher.burst(&key, &ids)?;
                let first = sent.first().copied().unwrap_or(confirmed);
                (sent, Some(confirmed - first))
            }
        };
        // Until every message ran, nothing new ran for IDLE, or the run's time is up.
        let wanted = warm_sent + ids.len();
        let run_start = Instant::now();
        let (mut seen, mut last_change) = (count_lines(&stamps), Instant::now());
        while seen < wanted && last_change.elapsed() < IDLE && run_start.elapsed() < s.run_timeout {
            if let Some(why) = consumer.exited() {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(20));
            let now = count_lines(&stamps);
            if now != seen {
                (seen, last_change) = (now, Instant::now());
            }
        }
        // A moment for a command that would run twice (a redelivery) to show.
        std::thread::sleep(Duration::from_millis(200));
        let after = CpuMark::take(consumer.pid(), broker_pid);
        consumer.terminate(STOP_TIMEOUT);

        let stamped = read_stamps(&stamps);
        let mut out = RunOut {
            sent: ids.len(),
            publish_secs,
            cpu: cpu_use(&before, &after),
            load1,
            ..RunOut::default()
        };
        let mut last_start: f64 = 0.0;
        for (id, t_sent) in ids.iter().zip(&sent) {
            match stamped.get(id).map(Vec::as_slice) {
                None | Some([]) => out.missing += 1,
                Some([t]) => {
                    out.once += 1;
                    last_start = last_start.max(*t);
                    if case.kind == Kind::Latency {
                        out.ms.push((t - t_sent) * 1e3);
                    }
                }
                Some(_) => out.twice += 1,
            }
        }
        if case.kind == Kind::Burst {
            let first = sent.first().copied().unwrap_or(0.0);
            out.drain = (last_start > first).then_some(last_start - first);
        }
        let _ = self.broker.ctl(&["delete_queue", &queue]);
        Ok(out)
    }

    /// Floors: spawning the stamp script from here (`n` times, serially): start latency in
    /// ms; a publish → confirm round trip; the broker's rate for `burst` pipelined
    /// messages to a queue nobody consumes (messages/s).
    fn floors(&self, round: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>, f64), String> {
        let dir = self.tmp.path().join(format!("floor-{round}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let stamps = dir.join("stamps.txt");
        let mut spawn_ms = Vec::with_capacity(n);
        let body = format!("{{\"uuid\":\"floor\",\"pad\":\"{}\"}}\n", "x".repeat(400));
        for _ in 0..n {
            let t = epoch_secs();
            let mut child = Command::new(&self.stamp)
                .arg(&stamps)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("{}: {e}", self.stamp.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                let _ = stdin.write_all(body.as_bytes());
            }
            child.wait().map_err(|e| e.to_string())?;
            if let Some(started) = read_stamps(&stamps)
                .remove("floor")
                .and_then(|v| v.last().copied())
            {
                spawn_ms.push((started - t) * 1e3);
            }
            let _ = std::fs::remove_file(&stamps);
        }
        let url = self.broker.url();
        let queue = format!("bench-floor-{round}");
        let bind = format!("bench.floor-{round}.#");
        rabbitmq::declare(&url, &queue, &[("amq.topic", &bind)])?;
        let publisher = Publisher::connect(&url, self.settings.size)?;
        let key = format!("bench.floor-{round}.x");
        let mut rtt_ms = Vec::new();
        for i in 0..100 {
            let (sent, confirmed) = publisher.one(&key, &format!("rtt-{i}"))?;
            rtt_ms.push((confirmed - sent) * 1e3);
        }
        let ids: Vec<String> = (0..self.settings.burst)
            .map(|i| format!("floor-{round}-{i}"))
            .collect();
        let (sent, confirmed) = publisher.burst(&key, &ids)?;
        let secs = confirmed - sent.first().copied().unwrap_or(confirmed);
        drop(publisher);
        let _ = self.broker.ctl(&["delete_queue", &queue]);
        Ok((spawn_ms, rtt_ms, ids.len() as f64 / secs.max(1e-9)))
    }
}

// ---------------------------------------------------------------------------------------

type Results = Vec<(Case, usize, Result<RunOut, String>)>;

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}

fn ms1(v: f64) -> String {
    format!("{v:.1}")
}

fn main() {
    let settings = Settings::from_env();
    if let Some(why) = rabbitmq::missing() {
        println!("SKIPPED: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("hark-bench-amqp-")
        .tempdir()
        .unwrap_or_else(|e| exit_with(&format!("temporary directory: {e}")));
    let broker = Broker::start(&tmp.path().join("broker")).unwrap_or_else(|e| exit_with(&e));
    let stamp = settings.root.join("bench/trigger/stamp");
    let amqp_consume = ["/usr/bin/amqp-consume", "/usr/local/bin/amqp-consume"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "amqp-consume is missing (apt-get install amqp-tools)".to_string());
    let fm = settings
        .venv
        .as_ref()
        .map(|v| v.join("bin/fedora-messaging"))
        .ok_or_else(|| {
            "fedora-messaging is not in .venv or HARK_BENCH_PYTHON_VENV (scripts/setup-venv.sh)"
                .to_string()
        });
    let rig = Rig {
        settings,
        tmp,
        broker,
        stamp,
        amqp_consume,
        fm,
    };
    let s = &rig.settings;
    let mut notes = Vec::new();
    let cases: Vec<Case> = s
        .cases
        .iter()
        .copied()
        .filter(|c| match rig.available(c.consumer) {
            Ok(()) => true,
            Err(why) => {
                if !notes.contains(&why) {
                    eprintln!("not measured: {why}");
                    notes.push(why);
                }
                false
            }
        })
        .collect();
    let mut results: Results = Vec::new();
    let mut floors = Vec::new();
    for round in 1..=s.runs {
        for &case in &cases {
            let out = rig.run(case, round);
            match &out {
                Ok(r) => eprintln!(
                    "round {round} {:<19} p50 {:>6} ms  p99 {:>6} ms  {:>6} commands/s  once {}/{}  missing {}  twice {}  load {:.1}",
                    case.key(),
                    opt(r.pct(50.0), ms1),
                    opt(r.pct(99.0), ms1),
                    opt(r.rate(), thousands),
                    r.once,
                    r.sent,
                    r.missing,
                    r.twice,
                    r.load1
                ),
                Err(e) => eprintln!("round {round} {:<19} FAILED: {e}", case.key()),
            }
            results.push((case, round, out));
        }
        if !s.smoke {
            match rig.floors(round, 200) {
                Ok(f) => floors.push(f),
                Err(e) => eprintln!("round {round} floors FAILED: {e}"),
            }
        }
    }
    if s.smoke {
        let bad: Vec<String> = results
            .iter()
            .filter_map(|(case, _, r)| match r {
                Err(e) => Some(format!("{}: {e}", case.key())),
                Ok(r) if r.once != r.sent => Some(format!(
                    "{}: {} of {} messages ran their command exactly once ({} not at all, {} more than once)",
                    case.key(),
                    r.once,
                    r.sent,
                    r.missing,
                    r.twice
                )),
                Ok(_) => None,
            })
            .collect();
        println!(
            "amqp_trigger smoke test (run `cargo bench --bench amqp_trigger` to measure): {}",
            if bad.is_empty() { "ok" } else { "FAILED" }
        );
        for b in bad.iter().chain(notes.iter()) {
            println!("  {b}");
        }
        let code = i32::from(!bad.is_empty());
        drop(rig);
        std::process::exit(code);
    }
    report(&rig, &cases, &results, &floors, &notes);
    if std::env::var_os("HARK_BENCH_KEEP").is_some() {
        let Rig { tmp, .. } = rig;
        eprintln!("kept the run directories in {}", tmp.keep().display());
    }
}

type Metric = dyn Fn(&RunOut) -> Option<f64>;

fn report(
    rig: &Rig,
    cases: &[Case],
    results: &Results,
    floors: &[(Vec<f64>, Vec<f64>, f64)],
    notes: &[String],
) {
    let s = &rig.settings;
    let ok = |case: Case| -> Vec<&RunOut> {
        results
            .iter()
            .filter(|(c, _, _)| *c == case)
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .collect()
    };
    let med = |case: Case, f: &Metric| median(ok(case).iter().filter_map(|r| f(r)).collect());
    let p50 = |r: &RunOut| r.pct(50.0);
    let p99 = |r: &RunOut| r.pct(99.0);
    let rate = |r: &RunOut| r.rate();
    let own = |r: &RunOut| r.per_msg_us(r.cpu.consumer);
    let cmds = |r: &RunOut| r.per_msg_us(r.cpu.commands);
    let brk = |r: &RunOut| r.per_msg_us(r.cpu.broker);
    let lat = |c| Case::new(Kind::Latency, c);
    let burst = |c| Case::new(Kind::Burst, c);

    println!("# AMQP → command start: hark trigger, amqp-consume, fedora-messaging\n");
    for line in machine_lines() {
        println!("- {line}");
    }
    println!("- hark binary: {}", s.hark_bin.display());
    let version = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    println!(
        "- broker: rabbitmq-server {} (Debian), on loopback, one node",
        version(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "rabbitmq-server"]))
            .unwrap_or_else(|| "?".into())
    );
    println!(
        "- amqp-consume: {}",
        match &rig.amqp_consume {
            Ok(_) => format!(
                "amqp-tools {}, prefetch 100",
                version(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "amqp-tools"]))
                    .unwrap_or_else(|| "?".into())
            ),
            Err(why) => format!("**not measured**: {why}"),
        }
    );
    let fm_line = match (&rig.fm, &s.venv) {
        (Ok(_), Some(venv)) => format!(
            "{} consume, callback tests/peers/fm_spawn.py (subprocess.run), prefetch 100",
            version(Command::new(venv.join("bin/python")).args([
                "-c",
                "import importlib.metadata as m, sys; print('fedora-messaging', m.version('fedora-messaging'), 'on Python', sys.version.split()[0])"
            ]))
            .unwrap_or_else(|| "fedora-messaging".into())
        ),
        _ => format!(
            "**not measured**: {}",
            rig.fm.as_ref().err().cloned().unwrap_or_default()
        ),
    };
    println!("- fedora-messaging: {fm_line}");
    println!(
        "- {} rounds, consumers interleaved; latency: {} messages at {}/s; burst: {} messages at once; {} bytes of JSON per body; command: bench/trigger/stamp (bash)",
        s.runs, s.latency_count, s.rate, s.burst, s.size
    );
    let loads: Vec<f64> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.load1))
        .collect();
    let busy: Vec<f64> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.cpu.machine_busy))
        .collect();
    if let Some(line) = load_line(&loads, &busy) {
        println!("- {line}");
    }
    for n in notes {
        println!("- not measured: {n}");
    }
    println!();

    println!("## Summary (medians over rounds)\n");
    println!(
        "| consumer | p50 ms | p99 ms | burst commands/s | consumer CPU µs/msg (latency; burst) | commands' CPU µs/msg | broker CPU µs/msg | exactly once |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let consumers = [
        Consumer::Hark,
        Consumer::HarkWide,
        Consumer::AmqpConsume,
        Consumer::FedoraMessaging,
    ];
    for c in consumers {
        let (l, b) = (lat(c), burst(c));
        if !cases.contains(&l) && !cases.contains(&b) {
            continue;
        }
        let us = |v: f64| thousands(v);
        let (once, sent) = results
            .iter()
            .filter(|(x, _, _)| x.consumer == c)
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .fold((0, 0), |(o, t), r| (o + r.once, t + r.sent));
        let failed = results
            .iter()
            .filter(|(x, _, r)| x.consumer == c && r.is_err())
            .count();
        println!(
            "| {} | {} | {} | {} | {}; {} | {} | {} | {once} / {sent}{} |",
            Case::new(Kind::Burst, c).label(s),
            opt(med(l, &p50), ms1),
            opt(med(l, &p99), ms1),
            opt(med(b, &rate), thousands),
            opt(med(l, &own), us),
            opt(med(b, &own), us),
            opt(med(l, &cmds).or(med(b, &cmds)), us),
            opt(med(l, &brk).or(med(b, &brk)), us),
            if failed > 0 {
                format!(" ({failed} runs failed)")
            } else {
                String::new()
            }
        );
    }
    println!();
    // Ratios: hark ÷ anchor, per round (the runs of a round share the machine's state).
    let per_round = |a: Case, b: Case, f: &Metric| {
        let get = |c: Case, round: usize| {
            results
                .iter()
                .find(|(x, r, _)| *x == c && *r == round)
                .and_then(|(_, _, o)| o.as_ref().ok())
                .and_then(f)
        };
        ratios_text((1..=s.runs).map(|round| (get(a, round), get(b, round))))
    };
    let lines: [(&str, Case, Case, &Metric); 12] = [
        (
            "p50, hark wide limit ÷ amqp-consume",
            lat(Consumer::HarkWide),
            lat(Consumer::AmqpConsume),
            &p50,
        ),
        (
            "p99, hark wide limit ÷ amqp-consume",
            lat(Consumer::HarkWide),
            lat(Consumer::AmqpConsume),
            &p99,
        ),
        (
            "p50, hark ÷ amqp-consume",
            lat(Consumer::Hark),
            lat(Consumer::AmqpConsume),
            &p50,
        ),
        (
            "p99, hark ÷ amqp-consume",
            lat(Consumer::Hark),
            lat(Consumer::AmqpConsume),
            &p99,
        ),
        (
            "p50, hark ÷ fedora-messaging",
            lat(Consumer::Hark),
            lat(Consumer::FedoraMessaging),
            &p50,
        ),
        (
            "p99, hark ÷ fedora-messaging",
            lat(Consumer::Hark),
            lat(Consumer::FedoraMessaging),
            &p99,
        ),
        (
            "burst commands/s, hark limit 1 ÷ amqp-consume",
            burst(Consumer::Hark),
            burst(Consumer::AmqpConsume),
            &rate,
        ),
        (
            "burst commands/s, hark limit 1 ÷ fedora-messaging",
            burst(Consumer::Hark),
            burst(Consumer::FedoraMessaging),
            &rate,
        ),
        (
            "burst commands/s, hark wide limit ÷ amqp-consume",
            burst(Consumer::HarkWide),
            burst(Consumer::AmqpConsume),
            &rate,
        ),
        (
            "consumer CPU per message at 100/s, hark ÷ amqp-consume",
            lat(Consumer::Hark),
            lat(Consumer::AmqpConsume),
            &own,
        ),
        (
            "consumer CPU per message at 100/s, hark ÷ fedora-messaging",
            lat(Consumer::Hark),
            lat(Consumer::FedoraMessaging),
            &own,
        ),
        (
            "consumer CPU per message in the burst, hark limit 1 ÷ fedora-messaging",
            burst(Consumer::Hark),
            burst(Consumer::FedoraMessaging),
            &own,
        ),
    ];
    for (what, a, b, f) in lines {
        if let Some(line) = per_round(a, b, f) {
            println!("Per round, {what}: {line}.  ");
        }
    }
    println!();

    println!("## Floors (same rounds)\n");
    println!("| floor | median | p99 / range |");
    println!("|---|---:|---:|");
    let spawn: Vec<f64> = floors.iter().flat_map(|f| f.0.iter().copied()).collect();
    let rtt: Vec<f64> = floors.iter().flat_map(|f| f.1.iter().copied()).collect();
    let pub_rates: Vec<f64> = floors.iter().map(|f| f.2).collect();
    println!(
        "| spawn bench/trigger/stamp from a Rust process, spawn → command start (ms) | {} | {} |",
        opt(median(spawn.clone()), |v| format!("{v:.2}")),
        opt(percentile(&spawn, 99.0), |v| format!("{v:.2}"))
    );
    println!(
        "| publish → confirm round trip, one message at a time (ms) | {} | {} |",
        opt(median(rtt.clone()), |v| format!("{v:.2}")),
        opt(percentile(&rtt, 99.0), |v| format!("{v:.2}"))
    );
    println!(
        "| broker publish rate, {} pipelined persistent messages to a queue nobody consumes (messages/s) | {} | {} |",
        s.burst,
        opt(median(pub_rates.clone()), thousands),
        if pub_rates.is_empty() {
            "—".into()
        } else {
            format!(
                "{}–{}",
                thousands(pub_rates.iter().copied().fold(f64::INFINITY, f64::min)),
                thousands(pub_rates.iter().copied().fold(0.0, f64::max))
            )
        }
    );
    println!();

    println!("## Raw runs\n");
    println!("| case | round | sent | once | missing | twice | p50 ms | p99 ms | max ms | commands/s | publish s | consumer CPU (s) | commands' CPU (s) | broker CPU (s) | machine busy | load avg |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (case, round, out) in results {
        match out {
            Ok(r) => println!(
                "| {} | {round} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} % | {:.1} |",
                case.key(),
                r.sent,
                r.once,
                r.missing,
                r.twice,
                opt(r.pct(50.0), ms1),
                opt(r.pct(99.0), ms1),
                opt(r.ms.iter().copied().reduce(f64::max), ms1),
                opt(r.rate(), thousands),
                opt(r.publish_secs, |v| format!("{v:.3}")),
                r.cpu.consumer,
                r.cpu.commands,
                r.cpu.broker,
                r.cpu.machine_busy,
                r.load1
            ),
            Err(e) => println!(
                "| {} | {round} | | | | | | | | | | | | | | FAILED: {} |",
                case.key(),
                e.replace('\n', " ").replace('|', "\\|")
            ),
        }
    }
    println!();
    println!("Latency = the wall clock the command read first (`$EPOCHREALTIME` in bench/trigger/stamp) minus the wall clock just before the message was published. Burst commands/s = messages whose command ran ÷ (last command start − first publish). CPU from /proc/PID/stat (10 ms ticks) over the measured interval: the consumer's own (hark trigger and its live helper processes, such as its job spawner; amqp-consume; the Python process), its commands' (reaped children of the consumer and of those helpers: the stamp script and whatever ran it), the broker's (its Erlang VM).");
}
