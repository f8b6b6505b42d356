//! `hark trigger`: the daemon. Subscribes to every relay (and fedmsg endpoints), admits
//! events through the same trust policy as the relay, matches them against the rule set,
//! and hands matches to the scheduler, whose jobs the runner executes.
//!
//! Threads and tasks: one OS thread owns the ZeroMQ SUB socket and feeds frames into a
//! bounded channel; everything else runs on a small tokio runtime in one event loop, so the
//! scheduler needs no locks. Commands run as tokio tasks that report back over a channel.

pub mod reload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::admit::{Admission, Dedupe, Gate, Mode, Sequences, TrustPolicy};
use crate::bus::subscribe::Subscriber;
use crate::config::ZmqConfig;
use crate::event::keys::SigningKey;

use crate::metrics::Registry;
use crate::runner::{self, Finished};
use crate::scheduler::{Notice, Scheduler, SchedulerOptions, Start};
use crate::store::{now_ms, Store};
use crate::systemd::notify;
use reload::RuleCache;

/// Most events filed in one transaction.
const INTAKE_BATCH: usize = 512;

pub struct TriggerOptions {
    pub connect: Vec<String>,
    pub fedmsg: Vec<String>,
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
}

fn spawn_subscriber(
    endpoints: Vec<String>,
    zmq: ZmqConfig,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let sub = Subscriber::connect(&endpoints, &[], &zmq)?;
    std::thread::Builder::new()
        .name("trigger-subscriber".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match sub.recv(Duration::from_millis(250)) {
                    Ok(Some(frames)) => {
                        if tx.blocking_send(frames).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error!("subscriber: {e}");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        })
        .context("starting the subscriber thread")
}

/// Publish job notices from a thread of their own: a slow or absent relay must never stall
/// the event loop. Each notice gets the publisher's usual resends within a short timeout.
fn spawn_results_publisher(
    endpoint: String,
    key: SigningKey,
    zmq: ZmqConfig,
) -> std::sync::mpsc::Sender<Notice> {
    let (tx, rx) = std::sync::mpsc::channel::<Notice>();
    let spawned = std::thread::Builder::new()
        .name("results".into())
        .spawn(move || {
            let origin = crate::bus::relay::hostname();
            for notice in rx {
                let topic = format!("_hark.job.{}", notice.kind);
                let data = serde_json::to_value(&notice).unwrap_or_default();
                let published =
                    crate::bus::publish::build_event(&topic, data, &key, Some(&origin), None)
                        .map_err(|e| e.to_string())
                        .and_then(|ev| {
                            crate::bus::publish::submit(
                                &endpoint,
                                &ev,
                                Duration::from_secs(5),
                                &zmq,
                            )
                            .map_err(|e| e.to_string())
                        });
                if let Err(e) = published {
                    warn!(job = notice.job, "cannot publish {topic}: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        error!("cannot start the results publisher: {e}");
    }
    tx
}

fn log_store_error(what: &str, e: rusqlite::Error, metrics: &Registry) {
    metrics.inc("hark_store_errors_total", &[]);
    error!("state store: {what}: {e} (is the disk full or the state file unwritable?)");
}

/// Run the daemon until SIGTERM/SIGINT (or until `stop` is set). `ready` runs once the
/// rules are loaded and the subscriptions are made.
pub fn run(
    opts: TriggerOptions,
    metrics: Registry,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_loop(opts, metrics, stop, ready))
}

async fn run_loop(
    opts: TriggerOptions,
    metrics: Registry,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let store = Store::open(&opts.state)
        .with_context(|| format!("opening the state file {}", opts.state.display()))?;
    let mut cache = RuleCache::new(opts.rule_dirs.clone());
    let mut sched = Scheduler::new(store, cache.set(), opts.scheduler, metrics.clone())
        .context("loading jobs from the state file")?;
    if let Some(addr) = opts.metrics_addr.clone() {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = m.serve(&addr).await {
                error!("metrics endpoint {addr}: {e}");
            }
        });
    }
    let mut endpoints = opts.connect.clone();
    endpoints.extend(opts.fedmsg.iter().cloned());
    let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<Vec<u8>>>(10_000);
    let sub_stop = Arc::new(AtomicBool::new(false));
    let subscriber = spawn_subscriber(
        endpoints.clone(),
        opts.zmq.clone(),
        frames_tx,
        sub_stop.clone(),
    )?;
    let mut intake = Admission::new(
        Gate::new(opts.policy, opts.allow_fedmsg, usize::MAX),
        Mode::Enforce,
        Dedupe::new(opts.dedupe_window, opts.dedupe_capacity),
        Sequences::new(sched.relay_seqs().unwrap_or_default()),
        metrics.clone(),
    );
    let results = opts
        .results
        .map(|(ep, key)| spawn_results_publisher(ep, key, opts.zmq.clone()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i64, Finished)>();
    let start_all = |starts: Vec<Start>| {
        for s in starts {
            let tx = done_tx.clone();
            tokio::spawn(async move {
                let finished = runner::run(s.spec, s.cancel).await;
                let _ = tx.send((s.job, finished));
            });
        }
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut store_tick = tokio::time::interval(Duration::from_secs(1));
    let mut reload_tick =
        tokio::time::interval(opts.reload_interval.max(Duration::from_millis(100)));
    let mut stop_tick = tokio::time::interval(Duration::from_millis(200));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut cancelled_all = false;

    info!(
        connect = %endpoints.join(" "),
        rules = sched.rules().len(),
        state = %opts.state.display(),
        pending = sched.pending_count(),
        "trigger ready"
    );
    notify(&[crate::systemd::NotifyState::Ready]);
    ready();
    match sched.dispatch() {
        Ok(starts) => start_all(starts),
        Err(e) => log_store_error("starting recovered jobs", e, &metrics),
    }

    loop {
        if let Some(tx) = &results {
            for notice in sched.take_notices() {
                let _ = tx.send(notice);
            }
        }
        let until_due = sched
            .next_due()
            .map(|due| Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)))
            .unwrap_or(Duration::from_secs(3600));
        let draining = drain_deadline.is_some();
        tokio::select! {
            Some(frames) = frames_rx.recv(), if !draining => {
                // Everything already queued is filed in one transaction: one fsync per
                // burst rather than per event.
                let mut batch = vec![frames];
                while batch.len() < INTAKE_BATCH {
                    match frames_rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                if let Err(e) = sched.begin_batch() {
                    log_store_error("starting a batch", e, &metrics);
                }
                let set = cache.set();
                for frames in batch {
                    let Some(admitted) = intake.admit(frames, "relay") else { continue };
                    let event = admitted.event;
                    if let Some(stamp) = &event.relay {
                        if let Err(e) = sched.note_relay_seq(&stamp.relay, &stamp.epoch, stamp.seq) {
                            log_store_error("saving the relay sequence", e, &metrics);
                        }
                    }
                    for rule in set.matching(&event) {
                        metrics.inc("hark_rule_matches_total", &[("rule", &rule.name)]);
                        if let Err(e) = sched.on_match(rule, &event) {
                            log_store_error(&format!("filing event {} for rule {}", event.uuid, rule.name), e, &metrics);
                        }
                    }
                }
                if let Err(e) = sched.commit_batch() {
                    log_store_error("committing received events (they are lost; replay them from a recording)", e, &metrics);
                    if let Err(e) = sched.sync_store() {
                        log_store_error("re-reading jobs", e, &metrics);
                    }
                }
                match sched.dispatch() { Ok(s) => start_all(s), Err(e) => log_store_error("dispatch", e, &metrics) }
            }
            Some((job, finished)) = done_rx.recv() => {
                if let Err(e) = sched.on_finished(job, finished) {
                    log_store_error(&format!("recording the end of job {job}"), e, &metrics);
                }
                if draining && sched.running_count() == 0 {
                    break;
                }
                match sched.dispatch() { Ok(s) => start_all(s), Err(e) => log_store_error("dispatch", e, &metrics) }
            }
            _ = tokio::time::sleep(until_due), if !draining => {
                match sched.dispatch() { Ok(s) => start_all(s), Err(e) => log_store_error("dispatch", e, &metrics) }
            }
            _ = store_tick.tick(), if !draining => {
                if let Err(e) = sched.sync_store() {
                    log_store_error("reading hark jobs requests", e, &metrics);
                }
                match sched.dispatch() { Ok(s) => start_all(s), Err(e) => log_store_error("dispatch", e, &metrics) }
            }
            _ = reload_tick.tick(), if !draining => {
                if cache.reload(false) {
                    sched.set_rules(cache.set());
                }
            }
            _ = hup.recv() => {
                let mut states = vec![crate::systemd::NotifyState::Reloading];
                if let Ok(now) = crate::systemd::NotifyState::monotonic_usec_now() {
                    states.push(now);
                }
                notify(&states);
                info!("SIGHUP: reloading rules");
                cache.reload(true);
                sched.set_rules(cache.set());
                notify(&[crate::systemd::NotifyState::Ready]);
            }
            _ = term.recv() => { drain_deadline = Some(begin_drain(&mut sched, opts.shutdown_grace)); if sched.running_count() == 0 { break } }
            _ = int.recv() => { drain_deadline = Some(begin_drain(&mut sched, opts.shutdown_grace)); if sched.running_count() == 0 { break } }
            _ = stop_tick.tick(), if !draining => {
                if stop.load(Ordering::Relaxed) {
                    drain_deadline = Some(begin_drain(&mut sched, opts.shutdown_grace));
                    if sched.running_count() == 0 { break }
                }
            }
            _ = async { if let Some(d) = drain_deadline { tokio::time::sleep_until(d).await } }, if draining && !cancelled_all => {
                warn!("shutdown grace period over; stopping {} running job(s); they run again after restart", sched.running_count());
                sched.cancel_all();
                cancelled_all = true;
            }
        }
    }
    sub_stop.store(true, Ordering::Relaxed);
    drop(frames_rx);
    let _ = tokio::task::spawn_blocking(move || subscriber.join()).await;
    info!("trigger stopped");
    Ok(())
}

fn begin_drain(sched: &mut Scheduler, grace: Duration) -> tokio::time::Instant {
    notify(&[crate::systemd::NotifyState::Stopping]);
    info!(
        "stopping: no new jobs start; {} running job(s) get {:?} to finish",
        sched.running_count(),
        grace
    );
    sched.drain();
    tokio::time::Instant::now() + grace
}
