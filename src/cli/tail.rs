//! `hark tail`: watch the bus. Verifies every event against the trusted keys and shows who
//! signed it; bad or untrusted signatures are shown, not hidden, since this is the tool an
//! admin reaches for when something does not arrive.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crossbeam_channel::RecvTimeoutError;

use crate::admit::{
    load_keyring, Admission, Dedupe, Gap, Gate, Mode, NewRelays, Sequences, TrustPolicy,
};
use crate::config::Config;
use crate::discovery::RelayList;
use crate::event::{sign, Event};
use crate::metrics::Registry;
use crate::sources::amqp::{AmqpSource, Consume};
use crate::sources::replay::ReplaySource;
use crate::sources::zmq::ZmqSource;
use crate::sources::{Source, Sources};
use crate::topic::TopicPattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One line per event: time, topic, signers, compact data.
    Line,
    /// One JSON object per line (stable, for scripts).
    Json,
    /// A header line and indented data.
    Pretty,
    /// Topic and uuid only.
    Terse,
}

/// What to watch: shared by `hark tail` and `hark record`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Relay PUB (or fedmsg) endpoint to connect to (repeatable) [default: tcp://127.0.0.1:5572].
    #[arg(long, value_name = "EP")]
    connect: Vec<String>,
    /// Only show topics matching GLOB (repeatable): `*` one segment, `**` any number.
    #[arg(long, value_name = "GLOB", value_parser = |s: &str| TopicPattern::parse(s).map_err(|e| e.to_string()))]
    topic: Vec<TopicPattern>,
    /// Directory of trusted public keyfiles [default: trust.trusted_dir from hark.yaml].
    #[arg(long, value_name = "DIR")]
    trusted: Option<PathBuf>,
    /// Exit after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long (non-zero if --count was not reached).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    timeout: Option<Duration>,
    /// A relay's replay endpoint (repeatable): events this command misses while it runs
    /// (seen from relay seqs and heartbeats) are fetched from there and shown too.
    #[arg(long, value_name = "EP")]
    replay: Vec<String>,
    /// Find the relays in DNS: every _hark-publish._tcp.DOMAIN record, and the
    /// _hark-replay._tcp ones for missed events, followed as they change (replaces
    /// --connect and --replay; nameservers from discovery.nameservers).
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["connect", "replay"], value_parser = super::parse_domain)]
    srv: Option<String>,
    /// Configuration file (trusted keys directory and ZeroMQ options).
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// With --amqp URL: watch a queue of that broker instead of (or besides, with
    /// --connect) the bus. Messages are taken with auto-ack from a server-named queue
    /// bound with --amqp-bind (amqp.queue is not used, so the trigger's queue is never
    /// drained by a tail; --amqp-queue does name one).
    #[command(flatten)]
    amqp: super::amqp::AmqpArgs,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Connect to several relays at once to watch a redundant bus; each event is \
shown once (deduplicated by uuid).\n\n\
--json prints one object per line with the keys topic, uuid, time, format, signers (verified), \
untrusted_signers, bad_signatures, origin, author, relay, data, headers and broker (the last two for AMQP messages).\n\n\
Example:\n  hark tail --connect tcp://master:5572 --topic '_lk.archive.**' --trusted /etc/hark/keys/trusted"
)]
pub struct TailArgs {
    #[command(flatten)]
    watch: WatchArgs,
    #[arg(long, conflicts_with_all = ["pretty", "terse"])]
    /// One JSON object per line (stable, for scripts).
    json: bool,
    /// A header line and indented data.
    #[arg(long, conflicts_with = "terse")]
    pretty: bool,
    /// Topic and uuid only.
    #[arg(long)]
    terse: bool,
}

pub fn run(args: TailArgs) -> ExitCode {
    let style = if args.json {
        Style::Json
    } else if args.pretty {
        Style::Pretty
    } else if args.terse {
        Style::Terse
    } else {
        Style::Line
    };
    let stdout = std::io::stdout();
    watch(&args.watch, |event, report| {
        let text = render(style, event, report);
        let mut out = stdout.lock();
        writeln!(out, "{text}").and_then(|_| out.flush())
    })
}

impl WatchArgs {
    /// The endpoints given on the command line (empty means the configured default), or
    /// the AMQP broker's URL (without its password).
    pub fn endpoints(&self) -> Vec<String> {
        match &self.amqp.amqp {
            Some(url) if self.connect.is_empty() => vec![crate::sources::amqp::redact(url)],
            _ => self.connect.clone(),
        }
    }
}

/// Subscribe, verify and dedupe, calling `on_event` for each event shown, until --count,
/// --timeout, SIGTERM/SIGINT, or `on_event` fails (a closed pipe ends quietly).
pub fn watch(
    args: &WatchArgs,
    mut on_event: impl FnMut(&Event, &sign::SignatureReport) -> std::io::Result<()>,
) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    if let Some(dir) = &args.trusted {
        config.trust.trusted_dir = dir.clone();
    }
    let keyring = match load_keyring(&config.trust.trusted_dir) {
        Ok(ring) => ring,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let amqp = args.amqp.amqp.is_some();
    let (relays, replay) = match &args.srv {
        Some(domain) => (
            RelayList::Srv(domain.clone()),
            RelayList::Srv(domain.clone()),
        ),
        None if args.connect.is_empty() && !amqp => (
            config.relay.publish.clone().into(),
            args.replay.clone().into(),
        ),
        None => (args.connect.clone().into(), args.replay.clone().into()),
    };
    let ns = &config.discovery.nameservers;
    let mut components: Vec<Box<dyn Source>> = Vec::new();
    match ZmqSource::for_relays(&relays, &args.topic, &config.zmq, ns) {
        Ok(Some(s)) => components.push(Box::new(s)),
        Ok(None) => {}
        Err(e) => return super::fail(format!("{e:#}"), 1),
    }
    // What the start-up line names: the relays (when any) and the broker (when --amqp).
    let mut watched = Vec::new();
    if !relays.is_empty() {
        watched.push(format!("{relays} ({} trusted signers)", keyring.len()));
    }
    if amqp {
        // The trigger's queue is not a tail's to drain: only a queue named here is used.
        config.amqp.queue = None;
        args.amqp.clone().apply(&mut config.amqp);
        match AmqpSource::new(&config.amqp, Consume::Auto, Registry::default()) {
            Ok(s) => {
                watched.push(s.describe());
                components.push(Box::new(s));
            }
            Err(e) => return super::fail(format!("{e:#}"), super::EXIT_USAGE),
        }
    }
    if components.is_empty() {
        return super::fail(
            "nothing to subscribe to: give --connect, --srv or --amqp",
            super::EXIT_USAGE,
        );
    }
    let (gap_tx, gap_rx) = crossbeam_channel::unbounded::<Gap>();
    let replay = ReplaySource::for_relays(
        &replay,
        ns,
        gap_rx,
        config.zmq.clone(),
        Registry::default(),
        Default::default(),
    );
    let gaps: Option<crossbeam_channel::Sender<Gap>> = match replay {
        Ok(Some(r)) => {
            components.push(Box::new(r));
            Some(gap_tx)
        }
        Ok(None) => None,
        Err(e) => return super::fail(format!("{e:#}"), 1),
    };
    let sources = match Sources::start(components, 1024, 64 << 20) {
        Ok(s) => s,
        Err(e) => return super::fail(format!("{e:#}"), 1),
    };
    // Not "connected": libzmq connects in the background, and nothing says a relay is there
    // until it sends something (a hark relay's first heartbeat is logged).
    tracing::info!(
        "subscribing to {}; events show as they arrive",
        watched.join(" and ")
    );
    // Observe mode: everything is shown with what its signatures say, so the grants and
    // freshness of the policy do not matter here.
    let policy = match TrustPolicy::new(keyring, &[], &config.trust) {
        Ok(p) => p,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let mut admission = Admission::new(
        Gate::new(policy, true, usize::MAX),
        Mode::Observe,
        Dedupe::new(config.trust.dedupe_window, config.trust.dedupe_capacity),
        // With replay, a relay heard of after the first is caught up from then.
        Sequences::default().with_new_relays(if gaps.is_some() {
            NewRelays::Since(None)
        } else {
            NewRelays::AtHead
        }),
        Registry::default(),
    );
    if !args.replay.is_empty() {
        admission = admission.with_replay();
    }
    let shutdown = super::shutdown_flag();
    let started = Instant::now();
    let mut shown = 0u64;
    let mut admitted = Vec::new();
    let code = loop {
        if shutdown.load(Ordering::Relaxed) {
            break None;
        }
        if args.count.is_some_and(|n| shown >= n) {
            break Some(ExitCode::SUCCESS);
        }
        let wait = match args.timeout {
            Some(t) if started.elapsed() >= t => break None,
            Some(t) => (t - started.elapsed()).min(Duration::from_millis(250)),
            None => Duration::from_millis(250),
        };
        let received = match sources.rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                break Some(super::fail("the subscriber stopped", 1))
            }
        };
        admission.admit_into(received, &mut admitted);
        for gap in admission.take_gaps() {
            if let Some(tx) = &gaps {
                let _ = tx.send(gap);
            }
        }
        let mut failed = None;
        for a in admitted.drain(..) {
            let event = &a.event;
            if !args.topic.is_empty() && !args.topic.iter().any(|p| p.matches(&event.topic)) {
                continue;
            }
            if let Err(e) = on_event(event, &a.report.unwrap_or_default()) {
                // A reader that went away (`| head`) is a normal way to stop; anything else
                // is not.
                failed = Some(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    ExitCode::SUCCESS
                } else {
                    super::fail(format!("writing: {e}"), 1)
                });
                break;
            }
            shown += 1;
        }
        if failed.is_some() {
            break failed;
        }
    };
    sources.stop();
    if let Some(code) = code {
        return code;
    }
    match args.count {
        Some(n) if shown < n => {
            super::fail(format!("saw {shown} of {n} events before the timeout"), 1)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn render(style: Style, event: &Event, report: &sign::SignatureReport) -> String {
    match style {
        Style::Json => json!({
            "topic": event.topic,
            "uuid": event.uuid,
            "time": event.time,
            "format": event.format,
            "signers": report.verified,
            "untrusted_signers": report.unknown,
            "bad_signatures": report.bad.iter().map(|(s, r)| json!({"signer": s, "reason": r})).collect::<Vec<_>>(),
            "origin": event.origin,
            "author": event.author,
            "relay": event.relay,
            "data": event.data,
            "headers": event.headers,
            "broker": event.source,
        })
        .to_string(),
        Style::Terse => format!("{} {}", event.topic, event.uuid),
        Style::Line | Style::Pretty => {
            let mut who = if let Some(broker) = &event.source {
                format!("from broker {broker}")
            } else if report.verified.is_empty() {
                "UNVERIFIED".to_string()
            } else {
                format!("signed by {}", report.verified.join(", "))
            };
            if !report.bad.is_empty() {
                let bad: Vec<&str> = report.bad.iter().map(|(s, _)| s.as_str()).collect();
                who.push_str(&format!(" BAD SIGNATURE by {}", bad.join(", ")));
            }
            let time = event.time.as_deref().unwrap_or("-");
            if style == Style::Pretty {
                let data = serde_json::to_string_pretty(&event.data).unwrap_or_default();
                format!("{time} {} [{who}] {}\n{data}", event.topic, event.uuid)
            } else {
                let mut data = compact(&event.data);
                if data.len() > 300 {
                    let cut = (0..=300).rev().find(|i| data.is_char_boundary(*i)).unwrap_or(0);
                    data.truncate(cut);
                    data.push('…');
                }
                format!("{time} {} [{who}] {data}", event.topic)
            }
        }
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
