//! `hark trigger`: the daemon, as wiring between stages connected by channels:
//!
//! ```text
//! sources   ──frames──► admission thread ──events──► jobs thread ──starts──► tokio tasks
//! (a thread each,        (Admission: parse,  (bounded) (Store, Scheduler,     (runner:
//!  owning its socket)     trust, dedupe,                rules, reload; one    commands)
//!                         gaps)                         txn per burst) ◄──finished──┘
//! ```
//!
//! The tokio event loop does no blocking work: it runs the commands and the signal
//! handlers, and turns signals into messages for the jobs thread. The results publisher
//! and the metrics endpoint have a thread each.

mod jobs_thread;
pub mod reload;
pub mod results;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::Sender;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::admit::{Admission, Dedupe, Gap, Gate, Mode, NewRelays, Sequences, TrustPolicy};
use crate::config::ZmqConfig;
use crate::discovery::RelayList;
use crate::event::keys::SigningKey;
use crate::event::Event;
use crate::jobs::report::Reporter;
use crate::jobs::{Scheduler, SchedulerOptions, Store};
use crate::metrics::Registry;
use crate::sources::amqp::{AmqpSource, Consume};
use crate::sources::replay::{ReplaySource, UnrecoverableSink};
use crate::sources::zmq::ZmqSource;
use crate::sources::{Received, Source, Sources};
use crate::systemd::notify;
use jobs_thread::{Control, JobsThread};
use reload::RuleCache;

/// Most events filed in one transaction.
const INTAKE_BATCH: usize = 512;
/// How often admission looks for relays whose heartbeats stopped.
const TICK: Duration = Duration::from_secs(1);
/// Frames waiting for admission: at most this many, and this many bytes.
const FRAMES_QUEUE: usize = 10_000;
const FRAMES_QUEUE_BYTES: usize = 64 << 20;
/// Admitted bursts waiting for the jobs thread, and their events' bytes.
const EVENTS_QUEUE: usize = 64;
const EVENTS_QUEUE_BYTES: usize = 64 << 20;

pub struct TriggerOptions {
    pub connect: RelayList,
    pub fedmsg: Vec<String>,
    /// Relay replay endpoints: gaps are fetched from there.
    pub replay: RelayList,
    /// Where `{srv: DOMAIN}` lists are looked up; empty: the system's resolver.
    pub nameservers: Vec<std::net::SocketAddr>,
    pub rule_dirs: Vec<PathBuf>,
    pub state: PathBuf,
    pub policy: TrustPolicy,
    pub allow_fedmsg: bool,
    pub dedupe_window: Duration,
    pub dedupe_capacity: usize,
    pub metrics_addr: Option<String>,
    pub scheduler: SchedulerOptions,
    pub shutdown_grace: Duration,
    pub reload_interval: Duration,
    pub zmq: ZmqConfig,
    /// Publish `_hark.job.*` events to this relay submit endpoint, signed with this key.
    pub results: Option<(String, SigningKey)>,
    /// Consume this AMQP broker's queue too (acked once the jobs are stored).
    pub amqp: Option<crate::config::AmqpConfig>,
}

/// Admission on a thread of its own: signature checks are CPU work. Whatever is already
/// queued goes on as one burst, so the jobs thread files it in one transaction.
fn spawn_admission(
    mut intake: Admission,
    frames: crate::queue::Receiver<Received>,
    events: crate::queue::Sender<Vec<Arc<Event>>>,
    gaps: Option<Sender<Gap>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("trigger-admission".into())
        .spawn(move || {
            let mut admitted = Vec::new();
            loop {
                let first = match frames.recv_timeout(TICK) {
                    Ok(f) => f,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        intake.tick();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                };
                let mut burst = Vec::new();
                let mut next = Some(first);
                while let Some(f) = next.take() {
                    intake.admit_into(f, &mut admitted);
                    burst.extend(admitted.drain(..).map(|a| Arc::new(a.event)));
                    if burst.len() >= INTAKE_BATCH {
                        break;
                    }
                    next = frames.try_recv().ok();
                }
                if let Some(gaps) = &gaps {
                    for gap in intake.take_gaps() {
                        let _ = gaps.send(gap);
                    }
                }
                if !burst.is_empty() && events.send(burst).is_err() {
                    return;
                }
            }
        })
        .context("starting the admission thread")
}

/// Run the daemon until SIGTERM/SIGINT (or until `stop` is set). `ready` runs once the
/// rules are loaded and the subscriptions are made.
pub fn run(
    opts: TriggerOptions,
    metrics: Registry,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // Bound first, so an unusable address stops the daemon before anything says ready.
    let endpoint = opts
        .metrics_addr
        .as_deref()
        .map(crate::metrics::Endpoint::bind)
        .transpose()?;
    // One worker: the runtime only waits on pipes, sockets and timers (SQLite and rule
    // walks have threads of their own, the job spawner forks in its own process), and with
    // a second worker every job's few wake-ups were handed between the two (the one holding
    // epoll woke the other to run the task): 5 % less daemon CPU per job at 100 events/s,
    // bursts no slower. Without a spawner, each job's fork blocks this worker meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Before the spawner, which then starts in the daemon's cgroup leaf.
    crate::jobs::cgroup::init();
    // Before the daemon grows: starting the spawner is its one fork of the whole daemon.
    let spawner = {
        let _in_runtime = rt.enter();
        crate::jobs::spawner::Spawner::start()
            .inspect_err(|e| {
                warn!("cannot start the job spawner ({e}); jobs are forked from the daemon")
            })
            .ok()
    };
    // Opening the store, recovering jobs and the first rule walk happen here, before the
    // event loop exists.
    let mut store = Store::open(&opts.state)
        .with_context(|| format!("opening the state file {}", opts.state.display()))?;
    let mut cache = RuleCache::new(opts.rule_dirs.clone());
    metrics.set("hark_rules_loaded", &[], cache.set().len() as f64);
    metrics.add(
        "hark_rule_reload_errors_total",
        &[],
        cache.take_errors() as f64,
    );
    let mut sched = Scheduler::new(cache.set(), opts.scheduler);
    jobs_thread::recover(&mut store, &mut sched).context("loading jobs from the state file")?;
    let last_seq = store
        .relay_seqs()
        .context("reading relay sequence numbers")?;
    // The last time this daemon stored an event from a relay: it was listening then, so a
    // relay it first hears of now is caught up from that time (with replay). A new daemon
    // is listening from now on: what is published before its subscriptions are live is
    // fetched too, so "ready" does not lose the first events.
    let listening_since = store
        .relay_progress()
        .context("reading relay sequence numbers")?
        .iter()
        .map(|p| p.updated)
        .filter(|&t| t > 0)
        .max()
        .unwrap_or_else(crate::jobs::now_ms);

    let connect = opts.connect.to_string();
    let mut components: Vec<Box<dyn Source>> = Vec::new();
    let relays = ZmqSource::for_relays(&opts.connect, &[], &opts.zmq, &opts.nameservers)?;
    let fedmsg = match opts.fedmsg.is_empty() {
        true => None,
        false => Some(ZmqSource::connect(&opts.fedmsg, &[], &opts.zmq, "fedmsg")?),
    };
    for source in relays.into_iter().chain(fedmsg) {
        components.push(Box::new(source.with_metrics(metrics.clone())));
    }
    if let Some(amqp) = &opts.amqp {
        components.push(Box::new(AmqpSource::new(
            amqp,
            Consume::Acked,
            metrics.clone(),
        )?));
    }
    let amqp = opts
        .amqp
        .as_ref()
        .map(|a| crate::sources::amqp::redact(a.url.as_deref().unwrap_or_default()))
        .unwrap_or_default();
    let (gap_tx, gap_rx) = crossbeam_channel::unbounded::<Gap>();
    let lost: UnrecoverableSink = Default::default();
    let replay = ReplaySource::for_relays(
        &opts.replay,
        &opts.nameservers,
        gap_rx,
        opts.zmq.clone(),
        metrics.clone(),
        lost.clone(),
    )?;
    let replaying = replay.is_some();
    components.extend(replay.map(|r| Box::new(r) as Box<dyn Source>));
    let sources = Sources::start(components, FRAMES_QUEUE, FRAMES_QUEUE_BYTES)?;
    let (events_tx, events_rx) = crate::queue::bounded(EVENTS_QUEUE, EVENTS_QUEUE_BYTES);
    let (control_tx, control_rx) = crossbeam_channel::unbounded::<Control>();
    let mut intake = Admission::new(
        Gate::new(opts.policy, opts.allow_fedmsg, usize::MAX),
        Mode::Enforce,
        Dedupe::new(opts.dedupe_window, opts.dedupe_capacity),
        Sequences::new(last_seq).with_new_relays(if replaying {
            NewRelays::Since(Some(listening_since))
        } else {
            NewRelays::AtHead
        }),
        metrics.clone(),
    );
    if replaying {
        intake = intake.with_replay();
    }
    if !opts.connect.is_empty() {
        intake = intake.expecting_relays(std::slice::from_ref(&connect));
    }
    let health = intake.health();
    let admission = spawn_admission(
        intake,
        sources.rx.clone(),
        events_tx,
        replaying.then_some(gap_tx),
    )?;
    let results = match opts.results {
        Some((ep, key)) => match results::spawn(ep, key, opts.zmq.clone(), metrics.clone()) {
            Ok((queue, _thread)) => Some(queue),
            Err(e) => {
                error!("cannot start the results publisher: {e:#}");
                None
            }
        },
        None => None,
    };
    let _serving = endpoint.map(|e| e.spawn(metrics.clone())).transpose()?;
    let amqp_results = match opts.amqp.as_ref().and_then(|a| {
        let x = a.results_exchange.clone()?;
        Some((a, x))
    }) {
        Some((a, exchange)) => {
            match crate::bus::amqp_out::AmqpOut::spawn(a, exchange, "results", metrics.clone()) {
                Ok(out) => Some(out),
                Err(e) => {
                    error!("cannot start the AMQP results publisher: {e:#}");
                    None
                }
            }
        }
        None => None,
    };
    let sink: Option<crate::jobs::report::NoticeSink> = match (results.clone(), amqp_results) {
        (None, None) => None,
        (zmq, amqp) => Some(Box::new(move |n| {
            if let Some(out) = &amqp {
                results::push_amqp(out, &n);
            }
            if let Some(q) = &zmq {
                q.push(n);
            }
        })),
    };
    // The signal handlers go in before "trigger ready" is logged: a SIGHUP right after it
    // must reload the rules, not kill the daemon (the default action) as it did while the
    // handlers were installed later (found by tests/invariants.rs).
    let signals = {
        let _in_runtime = rt.enter();
        Signals::install()?
    };
    info!(
        connect = %connect,
        fedmsg = %opts.fedmsg.join(" "),
        amqp = %amqp,
        replay = %if replaying { opts.replay.to_string() } else { "off (gaps are only reported)".into() },
        rules = sched.rules().len(),
        state = %opts.state.display(),
        pending = sched.pending_count(),
        "trigger ready"
    );
    let jobs = JobsThread {
        store,
        sched,
        cache,
        report: Reporter::new(metrics.clone(), sink),
        metrics: metrics.clone(),
        runtime: rt.handle().clone(),
        events: events_rx,
        control: control_rx,
        control_tx: control_tx.clone(),
        reload_interval: opts.reload_interval,
        shutdown_grace: opts.shutdown_grace,
        lost,
        live_dir: crate::jobs::live::dir(&opts.state),
        health,
        spawner,
    };
    crate::jobs::live::clear(&jobs.live_dir);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let jobs = std::thread::Builder::new()
        .name("trigger-jobs".into())
        .spawn(move || {
            jobs.run();
            let _ = done_tx.send(());
        })
        .context("starting the jobs thread")?;

    let result = rt.block_on(event_loop(control_tx, stop, done_rx, ready, signals));
    let _ = jobs.join();
    if let Some(q) = &results {
        q.close();
    }
    sources.stop();
    let _ = admission.join();
    // Commands still running are stopped by dropping the runtime (kill_on_drop); a drain
    // only ends once none is left.
    drop(rt);
    info!("trigger stopped");
    result
}

/// The daemon's SIGHUP, SIGTERM and SIGINT handlers (installed inside the runtime).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// The tokio side: signals; returns once the jobs thread is done.
async fn event_loop(
    control: Sender<Control>,
    stop: Arc<AtomicBool>,
    mut done: tokio::sync::oneshot::Receiver<()>,
    ready: impl FnOnce(),
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    let mut stop_tick = tokio::time::interval(Duration::from_millis(200));
    notify(&[crate::systemd::NotifyState::Ready]);
    ready();
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut done => return Ok(()),
            _ = hup.recv() => { let _ = control.send(Control::Reload); }
            _ = term.recv() => { draining = true; let _ = control.send(Control::Drain); }
            _ = int.recv() => { draining = true; let _ = control.send(Control::Drain); }
            _ = stop_tick.tick(), if !draining => {
                if stop.load(Ordering::Relaxed) {
                    draining = true;
                    let _ = control.send(Control::Drain);
                }
            }
        }
    }
}
