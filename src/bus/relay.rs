//! `hark relay`: accept submissions and fedmsg publications, publish what passes.
//!
//! Threads: one socket thread owns every libzmq socket (submit ROUTER, publish PUB, fedmsg
//! SUB, and an inproc doorbell); `workers` threads verify and countersign native events,
//! which is where the CPU goes. Submissions carry a ticket so that results are published
//! in arrival order whatever worker finishes first. The socket thread then drops duplicate
//! uuids, stamps `unsigned: {relay, epoch, seq, received}`, and hands each poll round to
//! the journal thread ([`super::journal_thread`]); once the round is on disk it publishes
//! and acks it. Without a journal it publishes at once.
//!
//! fedmsg frames from the inbound SUB are checked (two frames, JSON, frame 0 equal to the
//! body's topic, size) and forwarded byte for byte: fedmsg signatures cover re-serialized
//! JSON that only fedmsg's own consumers can check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use tracing::{info, warn};

use super::ack::{Ack, AckStatus};
use super::heartbeat::Heartbeat;
use super::journal_thread::{self, JournalThread, Journaled, Round, Written};
use super::socket::{bind_all, new_socket, recv_frames};
use crate::admit::{Counters, Dedupe, Gate, Refusal, Refusals, Refused, TrustPolicy};
use crate::config::{RelayConfig, TrustConfig, ZmqConfig};
use crate::event::keys::SigningKey;
use crate::event::{canonical, sign};
use crate::journal::replay::MAX_CHUNK;
use crate::journal::{Journal, NewEntry, Retention};
use crate::metrics::Registry;

const DOORBELL: &str = "inproc://hark-relay-doorbell";
/// Most uuids read back from the journal at start (the oldest of a longer window are
/// covered by the subscribers' own dedupe and done markers).
const RESTART_DEDUPE_LIMIT: usize = 200_000;
/// Submissions waiting for a worker; beyond this the ROUTER's own queue absorbs bursts.
const QUEUE_DEPTH: usize = 4096;
/// Rounds handed to the journal and not yet written; beyond this the relay stops reading
/// its inputs until the disk catches up, so memory stays bounded.
const ROUNDS_IN_FLIGHT: usize = 16;

/// Everything the relay needs, resolved from config and flags.
pub struct RelayOptions {
    pub name: String,
    pub submit: Vec<String>,
    pub publish: Vec<String>,
    pub fedmsg_inbound: Vec<String>,
    pub key: Option<SigningKey>,
    pub policy: TrustPolicy,
    pub max_message_size: usize,
    pub workers: usize,
    pub dedupe_window: Duration,
    pub dedupe_capacity: usize,
    pub zmq: ZmqConfig,
    /// How often to publish a heartbeat; zero turns them off.
    pub heartbeat: Duration,
    /// Where every published event is written first; `None`: no journal, no replay.
    pub journal: Option<PathBuf>,
    pub retention: Retention,
    /// ROUTER endpoints answering replay requests (only with a journal).
    pub replay: Vec<String>,
    /// The relay's ZeroMQ context. Its submit ROUTER is also bound on
    /// [`crate::http::submit::INPROC_SUBMIT`] there, for the HTTP API's submissions, and
    /// its PUB on [`crate::http::stream::INPROC_PUBLISH`], for the live stream.
    pub context: zmq::Context,
    /// Forward every published event to this AMQP exchange too (`--amqp-out`).
    pub amqp_out: Option<crate::bus::amqp_out::AmqpOut>,
}

impl RelayOptions {
    pub fn new(
        relay: &RelayConfig,
        trust: &TrustConfig,
        zmq: &ZmqConfig,
        policy: TrustPolicy,
        key: Option<SigningKey>,
    ) -> Self {
        let workers = match relay.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        RelayOptions {
            name: relay.name.clone().unwrap_or_else(hostname),
            submit: relay.submit.clone(),
            publish: relay.publish.clone(),
            fedmsg_inbound: relay.fedmsg_inbound.clone(),
            key,
            policy,
            max_message_size: relay.max_message_size,
            workers,
            dedupe_window: trust.dedupe_window,
            dedupe_capacity: trust.dedupe_capacity,
            zmq: zmq.clone(),
            heartbeat: relay.heartbeat,
            journal: relay.journal.clone(),
            retention: Retention {
                max_age: relay.journal_max_age,
                max_bytes: relay.journal_max_bytes,
            },
            replay: relay.replay.clone(),
            context: zmq::Context::new(),
            amqp_out: None,
        }
    }
}

/// This machine's host name, for relay and origin names.
pub fn hostname() -> String {
    // gethostname(2), not /proc: hardened units may hide /proc/sys.
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Where a submission came from, so that the ack finds its way back.
struct Origin {
    identity: Vec<u8>,
    /// REQ peers put an empty delimiter frame before the body and expect it back.
    delimited: bool,
}

struct Submission {
    ticket: u64,
    origin: Origin,
    frame: Vec<u8>,
    received: DateTime<Utc>,
}

struct Verdict {
    ticket: u64,
    origin: Origin,
    received: DateTime<Utc>,
    outcome: Result<Ready, Refused>,
}

/// A verified (and countersigned) event as a worker hands it to the socket thread: its
/// canonical JSON with a gap for the `unsigned` stamp, so that the socket thread neither
/// serializes nor frees a parsed event.
struct Ready {
    topic: String,
    uuid: String,
    body: canonical::Gapped,
}

/// After a restart, the uuids journaled within the dedupe window are duplicates still:
/// a publisher resending because its ack was lost in the crash gets `duplicate`, not a
/// second copy on the bus.
fn remember_journaled(journal: &Journal, dedupe: &mut Dedupe, opts: &RelayOptions) {
    let now = chrono::Utc::now().timestamp_millis();
    let window = i64::try_from(opts.dedupe_window.as_millis()).unwrap_or(i64::MAX);
    let limit = opts.dedupe_capacity.clamp(1, RESTART_DEDUPE_LIMIT);
    // The newest ones: a crash loses the acks of the last events, not the first.
    let recent = journal
        .seqs_for_time(now.saturating_sub(window), now)
        .and_then(|span| match span {
            Some((first, last)) => {
                let from = first.max(last.saturating_sub(limit as u64 - 1));
                journal.range(from, limit)
            }
            None => Ok(Vec::new()),
        });
    match recent {
        Ok(entries) => {
            let at = Instant::now();
            for e in &entries {
                dedupe.first_seen(&e.uuid, at);
            }
            if !entries.is_empty() {
                info!(
                    "remembered {} uuid(s) from the journal as already published",
                    entries.len()
                );
            }
        }
        Err(e) => warn!("cannot read recent uuids from the journal: {e}"),
    }
}

/// Submissions a worker takes from the queue at once at most: their signatures are verified
/// in one batch, and a batch waits for its slowest member.
const VERIFY_BATCH: usize = 32;

/// Admission, then the countersignature over the bytes verification computed, then the
/// canonical JSON to publish: the CPU-heavy part, on a worker thread.
fn verify(
    gate: &Gate,
    key: Option<&SigningKey>,
    batch: Vec<(Vec<u8>, DateTime<Utc>)>,
) -> Vec<Result<Ready, Refused>> {
    gate.check_submissions(batch)
        .into_iter()
        .map(|checked| {
            let (mut event, mut claims) = checked?;
            let relay_error = |uuid: &str, what: String| Refused {
                uuid: Some(uuid.to_string()),
                refusal: Refusal::RelayError(what),
            };
            if let Some(key) = key {
                let signed = claims
                    .message(&event.body)
                    .map_err(|e| relay_error(&event.uuid, format!("countersigning: {e}")))?;
                sign::sign_message(&mut event.body, key, signed)
                    .map_err(|e| relay_error(&event.uuid, format!("countersigning: {e}")))?;
            }
            let body = match canonical::Gapped::new(&event.body, "unsigned") {
                Ok(Some(body)) => body,
                Ok(None) => return Err(relay_error(&event.uuid, "encoding: not an object".into())),
                Err(e) => return Err(relay_error(&event.uuid, format!("encoding: {e}"))),
            };
            Ok(Ready {
                topic: event.topic,
                uuid: event.uuid,
                body,
            })
        })
        .collect()
}

fn worker(
    ctx: zmq::Context,
    gate: Gate,
    key: Option<SigningKey>,
    jobs: Receiver<Submission>,
    results: Sender<Verdict>,
) {
    let doorbell = match ctx
        .socket(zmq::PUSH)
        .and_then(|s| s.connect(DOORBELL).map(|_| s))
    {
        Ok(s) => s,
        Err(e) => {
            warn!("relay worker cannot reach the socket thread: {e}");
            return;
        }
    };
    while let Ok(first) = jobs.recv() {
        let mut subs = vec![first];
        while subs.len() < VERIFY_BATCH {
            match jobs.try_recv() {
                Ok(sub) => subs.push(sub),
                Err(_) => break,
            }
        }
        let frames = subs
            .iter_mut()
            .map(|s| (std::mem::take(&mut s.frame), s.received))
            .collect();
        let outcomes = verify(&gate, key.as_ref(), frames);
        for (sub, outcome) in subs.into_iter().zip(outcomes) {
            let verdict = Verdict {
                ticket: sub.ticket,
                origin: sub.origin,
                received: sub.received,
                outcome,
            };
            if results.send(verdict).is_err() {
                return;
            }
        }
        // A full doorbell means the socket thread already has wake-ups pending.
        let _ = doorbell.send(&b""[..], zmq::DONTWAIT);
    }
}

/// The `unsigned` stamp `{relay, epoch, seq, received}` as canonical JSON, written directly
/// (keys in canonical order): the socket thread does this once per native event.
fn unsigned_stamp(
    relay: &str,
    epoch: &str,
    seq: u64,
    received: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"epoch\":");
    serde_json::to_writer(&mut out, epoch)?;
    out.extend_from_slice(b",\"received\":");
    serde_json::to_writer(&mut out, received)?;
    out.extend_from_slice(b",\"relay\":");
    serde_json::to_writer(&mut out, relay)?;
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'}');
    Ok(out)
}

/// An event ready to publish, waiting for the journal's commit.
pub struct Outgoing {
    /// `[topic, json]`; frame 0 is valid UTF-8 (checked for fedmsg, built for native).
    /// libzmq messages: a fedmsg publication is published as it was received, its bytes
    /// never copied (copies and their allocations, freed on libzmq's I/O thread, were a
    /// quarter of the relay's CPU on pass-through).
    frames: [zmq::Message; 2],
    /// Shared with the dedupe window.
    uuid: Arc<str>,
    received_ms: i64,
    format: &'static str,
    /// Native submissions are acked; fedmsg publishers get no answer.
    reply: Option<Origin>,
}

impl Outgoing {
    fn topic(&self) -> &str {
        std::str::from_utf8(&self.frames[0])
            .ok()
            .unwrap_or_default()
    }
}

impl Journaled for Outgoing {
    type Frame = zmq::Message;
    fn entry(&self) -> NewEntry<'_, zmq::Message> {
        NewEntry {
            frames: &self.frames[..],
            topic: self.topic(),
            uuid: &self.uuid,
            received_ms: self.received_ms,
        }
    }
}

/// The socket thread's state.
struct Relay {
    opts: RelayOptions,
    metrics: Registry,
    epoch: String,
    /// The last seq published.
    seq: u64,
    /// The last seq stamped into an event handed to the journal (`seq` without one).
    staged: u64,
    /// Bumped when a round fails: the rounds staged after it carry seqs that will not be.
    generation: u64,
    journal: Option<JournalThread<Outgoing>>,
    rounds_in_flight: usize,
    /// Staged this round: journaled together (one fsync), then published and acked.
    outbox: Vec<Outgoing>,
    /// The fedmsg message being read, reused: its frames move into an [`Outgoing`].
    inbound: Vec<zmq::Message>,
    gate: Gate,
    dedupe: Dedupe,
    refusals: Refusals,
    next_ticket: u64,
    next_release: u64,
    pending: BTreeMap<u64, Verdict>,
}

/// Run the relay until `shutdown` is set. `ready` is called once every socket is bound.
pub fn run(
    opts: RelayOptions,
    metrics: Registry,
    shutdown: Arc<AtomicBool>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let ctx = opts.context.clone();
    let router = new_socket(&ctx, zmq::ROUTER, &opts.zmq)?;
    // A hard backstop far above the configured limit: libzmq drops the connection of a peer
    // that sends more, before buffering it; anything between is refused and counted below.
    router.set_maxmsgsize(
        i64::try_from(opts.max_message_size.saturating_mul(16)).unwrap_or(i64::MAX),
    )?;
    bind_all(&router, &opts.submit, "submit")?;
    // HTTP submissions enter here: the same socket, so the same admission, dedupe and ack.
    router
        .bind(crate::http::submit::INPROC_SUBMIT)
        .context("binding the relay's inproc submit endpoint")?;
    let publisher = new_socket(&ctx, zmq::PUB, &opts.zmq)?;
    bind_all(&publisher, &opts.publish, "publish")?;
    // The HTTP API's live stream subscribes here, on the relay's own context.
    publisher
        .bind(crate::http::stream::INPROC_PUBLISH)
        .context("binding the relay's inproc publish endpoint")?;
    let fedmsg = if opts.fedmsg_inbound.is_empty() {
        None
    } else {
        let sub = new_socket(&ctx, zmq::SUB, &opts.zmq)?;
        sub.set_maxmsgsize(
            i64::try_from(opts.max_message_size.saturating_mul(16)).unwrap_or(i64::MAX),
        )?;
        sub.set_subscribe(b"")?;
        bind_all(&sub, &opts.fedmsg_inbound, "fedmsg inbound")?;
        Some(sub)
    };
    let mut journal = match &opts.journal {
        Some(path) => Some(
            Journal::open(path, opts.retention)
                .with_context(|| format!("opening the relay journal {}", path.display()))?,
        ),
        None => {
            warn!("no journal (relay.journal unset): subscribers will see gaps after a restart but cannot replay them");
            None
        }
    };
    let replay = match (&journal, opts.replay.is_empty()) {
        (Some(_), false) => {
            let socket = new_socket(&ctx, zmq::ROUTER, &opts.zmq)?;
            // A whole chunk is queued at once; below this ZeroMQ would drop its tail.
            socket.set_sndhwm(i32::try_from(4 * MAX_CHUNK).unwrap_or(i32::MAX))?;
            socket.set_maxmsgsize(64 * 1024)?;
            bind_all(&socket, &opts.replay, "replay")?;
            Some(socket)
        }
        _ => None,
    };
    let doorbell = ctx
        .socket(zmq::PULL)
        .context("creating the relay doorbell")?;
    doorbell
        .bind(DOORBELL)
        .context("binding the relay doorbell")?;

    // Submissions are native events; fedmsg reaches the relay only on the inbound SUB.
    let gate = Gate::new(opts.policy.clone(), false, opts.max_message_size);
    let (job_tx, job_rx) = bounded::<Submission>(QUEUE_DEPTH);
    let (result_tx, result_rx) = unbounded::<Verdict>();
    let mut handles = Vec::new();
    for i in 0..opts.workers.max(1) {
        let (ctx, gate, key, jobs, results) = (
            ctx.clone(),
            gate.clone(),
            opts.key.clone(),
            job_rx.clone(),
            result_tx.clone(),
        );
        handles.push(
            std::thread::Builder::new()
                .name(format!("relay-verify-{i}"))
                .spawn(move || worker(ctx, gate, key, jobs, results))
                .context("starting a relay worker")?,
        );
    }
    drop((job_rx, result_tx));

    info!(
        relay = %opts.name,
        submit = %opts.submit.join(" "),
        publish = %opts.publish.join(" "),
        fedmsg_inbound = %opts.fedmsg_inbound.join(" "),
        workers = opts.workers,
        countersign = opts.key.as_ref().map(|k| k.name.as_str()).unwrap_or("off"),
        trusted_signers = opts.policy.keyring().len(),
        journal = %journal.as_ref().map(|j| format!("{} (epoch {}, head {})", opts.journal.as_deref().unwrap_or(Path::new("")).display(), j.epoch(), j.next_seq() - 1)).unwrap_or_else(|| "off".into()),
        replay = %replay.as_ref().map(|_| opts.replay.join(" ")).unwrap_or_else(|| "off".into()),
        "relay ready"
    );

    let mut dedupe = Dedupe::new(opts.dedupe_window, opts.dedupe_capacity);
    let epoch = journal
        .as_ref()
        .map(|j| j.epoch().to_string())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let seq = journal.as_ref().map_or(0, |j| j.next_seq() - 1);
    let journal = match journal.as_mut() {
        Some(j) => {
            journal_thread::prune(j);
            remember_journaled(j, &mut dedupe, &opts);
            let j = journal.take().context("the journal vanished")?;
            Some(JournalThread::start(
                &ctx,
                j,
                replay,
                DOORBELL,
                metrics.clone(),
            )?)
        }
        None => None,
    };
    ready();

    let mut relay = Relay {
        dedupe,
        refusals: Refusals::new(metrics.clone(), Counters::RELAY),
        gate,
        opts,
        metrics,
        epoch,
        seq,
        staged: seq,
        generation: 0,
        journal,
        rounds_in_flight: 0,
        outbox: Vec::new(),
        inbound: Vec::with_capacity(2),
        next_ticket: 0,
        next_release: 0,
        pending: BTreeMap::new(),
    };
    let mut last_stats = Instant::now();
    let mut last_heartbeat = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        if !relay.opts.heartbeat.is_zero() && last_heartbeat.elapsed() >= relay.opts.heartbeat {
            relay.heartbeat(&publisher);
            last_heartbeat = Instant::now();
        }
        // While the journal is behind, inputs wait in their sockets' queues.
        let disk_ok = relay.rounds_in_flight < ROUNDS_IN_FLIGHT;
        let wanted = |ok: bool| {
            if ok {
                zmq::POLLIN
            } else {
                zmq::PollEvents::empty()
            }
        };
        let mut items = vec![
            router.as_poll_item(wanted(disk_ok && job_tx.len() < QUEUE_DEPTH)),
            doorbell.as_poll_item(zmq::POLLIN),
        ];
        if let Some(sub) = &fedmsg {
            items.push(sub.as_poll_item(wanted(disk_ok)));
        }
        match zmq::poll(&mut items, 200) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e).context("polling relay sockets"),
        }
        let (submit_ready, bell_ready) = (items[0].is_readable(), items[1].is_readable());
        let fedmsg_ready = fedmsg.is_some() && items.get(2).is_some_and(|i| i.is_readable());
        drop(items);
        if bell_ready {
            while doorbell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        }
        relay.collect_written(&router, &publisher);
        while let Ok(verdict) = result_rx.try_recv() {
            relay.pending.insert(verdict.ticket, verdict);
        }
        relay.release(&router);
        if submit_ready {
            relay.read_submissions(&router, &job_tx);
        }
        if let (true, Some(sub)) = (fedmsg_ready, &fedmsg) {
            relay.read_fedmsg(sub);
        }
        relay.flush(&router, &publisher);
        if last_stats.elapsed() > Duration::from_secs(60) {
            relay.refusals.roll();
            last_stats = Instant::now();
        }
    }
    info!(published = relay.seq, "relay stopping");
    drop(job_tx);
    for h in handles {
        let _ = h.join();
    }
    // What is on its way to the disk is still published and acked.
    if let Some(journal) = relay.journal.take() {
        for written in journal.finish() {
            relay.settle(&router, &publisher, written);
        }
    }
    Ok(())
}

impl Relay {
    fn heartbeat(&self, publisher: &zmq::Socket) {
        let beat = Heartbeat::new(&self.opts.name, &self.epoch, self.seq, self.opts.heartbeat);
        if let Err(e) = publisher.send_multipart(beat.to_frames(), zmq::DONTWAIT) {
            warn!("cannot publish a heartbeat: {e}");
        }
    }

    /// Read what the ROUTER has queued (bounded, so publishing never starves).
    fn read_submissions(&mut self, router: &zmq::Socket, jobs: &Sender<Submission>) {
        let mut received = 0.0;
        self.read_submissions_counting(router, jobs, &mut received);
        // Once per round: a counter update formats its series name.
        if received > 0.0 {
            self.metrics.add(
                "hark_relay_received_total",
                &[("source", "submit")],
                received,
            );
        }
    }

    fn read_submissions_counting(
        &mut self,
        router: &zmq::Socket,
        jobs: &Sender<Submission>,
        received: &mut f64,
    ) {
        for _ in 0..1024 {
            let Ok(mut frames) = router.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            *received += 1.0;
            let identity = frames.remove(0);
            let delimited = frames.len() == 2 && frames[0].is_empty();
            if delimited {
                frames.remove(0);
            }
            let origin = Origin {
                identity,
                delimited,
            };
            let frame = match self.gate.submission_frame(frames) {
                Ok(frame) => frame,
                Err(refusal) => {
                    self.refuse(router, "submitted", &origin, None, &refusal);
                    continue;
                }
            };
            let sub = Submission {
                ticket: self.next_ticket,
                origin,
                frame,
                received: Utc::now(),
            };
            self.next_ticket += 1;
            match jobs.try_send(sub) {
                Ok(()) => {}
                // Cannot happen while the poll mask is honoured; never lose the message.
                Err(TrySendError::Full(sub)) | Err(TrySendError::Disconnected(sub)) => {
                    if jobs.send(sub).is_err() {
                        return;
                    }
                }
            }
            if jobs.len() >= QUEUE_DEPTH {
                return;
            }
        }
    }

    /// Publish or refuse verdicts in ticket order.
    fn release(&mut self, router: &zmq::Socket) {
        while let Some(verdict) = self.pending.remove(&self.next_release) {
            self.next_release += 1;
            match verdict.outcome {
                Err(refused) => self.refuse(
                    router,
                    "submitted",
                    &verdict.origin,
                    refused.uuid.as_deref(),
                    &refused.refusal,
                ),
                Ok(ready) => self.stage_native(router, verdict.origin, verdict.received, ready),
            }
        }
    }

    fn stage_native(
        &mut self,
        router: &zmq::Socket,
        origin: Origin,
        received: DateTime<Utc>,
        event: Ready,
    ) {
        let Some(uuid) = self.dedupe.admit(&event.uuid, Instant::now()) else {
            let refusal = Refusal::Duplicate {
                uuid: event.uuid.clone(),
            };
            // Counted, not logged: a publisher resending after a lost ack is normal.
            self.metrics
                .inc(Counters::RELAY.refused, &[("reason", refusal.reason())]);
            self.reply(
                router,
                &origin,
                &Ack {
                    uuid: Some(event.uuid),
                    status: AckStatus::Duplicate,
                    seq: None,
                    reason: Some(refusal.reason().into()),
                    message: Some(refusal.to_string()),
                },
            );
            return;
        };
        let seq = self.staged + self.outbox.len() as u64 + 1;
        let at = received.to_rfc3339_opts(SecondsFormat::Micros, true);
        let bytes = match unsigned_stamp(&self.opts.name, &self.epoch, seq, &at) {
            Ok(stamp) => event.body.fill(&stamp),
            Err(e) => {
                self.dedupe.forget(&event.uuid);
                let refusal = Refusal::RelayError(format!("encoding: {e}"));
                self.refuse(router, "submitted", &origin, Some(&event.uuid), &refusal);
                return;
            }
        };
        self.outbox.push(Outgoing {
            frames: [zmq::Message::from(event.topic.as_str()), bytes.into()],
            uuid,
            received_ms: received.timestamp_millis(),
            format: "laniakea",
            reply: Some(origin),
        });
    }

    /// Hand what was staged this round to the journal thread, which writes it in one
    /// transaction; it is published and acked when it comes back written
    /// ([`Relay::collect_written`]). Without a journal, publish it at once.
    fn flush(&mut self, router: &zmq::Socket, publisher: &zmq::Socket) {
        if self.outbox.is_empty() {
            return;
        }
        let Some(journal) = &self.journal else {
            // Drained, so the outbox keeps its capacity: regrowing it every round (the
            // reallocations, fresh pages from the kernel) was measurable on pass-through.
            let mut events = std::mem::take(&mut self.outbox);
            self.staged += events.len() as u64;
            self.publish(router, publisher, events.drain(..));
            debug_assert!(self.outbox.is_empty(), "publishing stages nothing");
            self.outbox = events;
            return;
        };
        if self.rounds_in_flight >= ROUNDS_IN_FLIGHT {
            return;
        }
        let events = std::mem::take(&mut self.outbox);
        let round = Round {
            first_seq: self.staged + 1,
            generation: self.generation,
            events,
        };
        let n = round.events.len() as u64;
        match journal.append(round) {
            Ok(()) => {
                self.staged += n;
                self.rounds_in_flight += 1;
            }
            Err(round) => self.refuse_round(router, round.events, "the journal thread stopped"),
        }
    }

    /// Publish and ack the rounds the journal has written; refuse the ones it could not.
    fn collect_written(&mut self, router: &zmq::Socket, publisher: &zmq::Socket) {
        let written: Vec<Written<Outgoing>> = match &self.journal {
            Some(journal) => journal.written().collect(),
            None => return,
        };
        for w in written {
            self.rounds_in_flight = self.rounds_in_flight.saturating_sub(1);
            self.settle(router, publisher, w);
        }
    }

    /// A round back from the journal: publish and ack it, or refuse it all (nothing
    /// un-journaled is ever acked) and forget the uuids, so the publishers' resends are not
    /// taken for duplicates.
    fn settle(&mut self, router: &zmq::Socket, publisher: &zmq::Socket, w: Written<Outgoing>) {
        let Round {
            first_seq,
            generation,
            events,
        } = w.round;
        match w.result {
            Ok(()) => self.publish(router, publisher, events),
            Err(why) => {
                if generation == self.generation {
                    // Seqs from `first_seq` on were not used: stage from there again. What
                    // is staged but not handed over carries later seqs, so it goes too.
                    self.generation += 1;
                    self.staged = first_seq - 1;
                    let held = std::mem::take(&mut self.outbox);
                    self.refuse_round(router, held, &why);
                }
                self.refuse_round(router, events, &why);
            }
        }
    }

    /// Refuse every event of a round that was not journaled, so that its publishers retry.
    fn refuse_round(&mut self, router: &zmq::Socket, events: Vec<Outgoing>, why: &str) {
        let refusal = Refusal::JournalUnavailable(why.to_string());
        for o in events {
            self.dedupe.forget(&o.uuid);
            match &o.reply {
                Some(origin) => self.refuse(router, "submitted", origin, Some(&o.uuid), &refusal),
                None => self.refusals.refuse("fedmsg", Some(&o.uuid), &refusal),
            }
        }
    }

    fn publish(
        &mut self,
        router: &zmq::Socket,
        publisher: &zmq::Socket,
        events: impl IntoIterator<Item = Outgoing>,
    ) {
        let (mut native, mut fedmsg) = (0.0, 0.0);
        let journaled = self.journal.is_some();
        for o in events {
            self.seq += 1;
            // Built first: libzmq takes the frames over.
            let amqp = self.opts.amqp_out.as_ref().map(|out| {
                let message = crate::bus::amqp_out::from_frames(
                    o.topic(),
                    &o.uuid,
                    o.format,
                    &o.frames,
                    &self.opts.name,
                );
                (out, message)
            });
            if let Err(e) = publisher.send_multipart(o.frames, 0) {
                self.metrics.inc("hark_relay_publish_failures_total", &[]);
                if !journaled {
                    // Nothing else has it: the publisher must send it again.
                    warn!(uuid = %o.uuid, "cannot publish: {e}; refusing it");
                    self.dedupe.forget(&o.uuid);
                    if let Some(origin) = &o.reply {
                        let refusal = Refusal::RelayError(format!("publishing: {e}"));
                        self.refuse(router, "submitted", origin, Some(&o.uuid), &refusal);
                    }
                    continue;
                }
                // On disk with its seq: subscribers fetch it through replay.
                warn!(uuid = %o.uuid, seq = self.seq, "cannot publish: {e}; subscribers fetch it from the journal");
            }
            if let Some((out, message)) = amqp {
                out.push(message);
            }
            if o.format == "fedmsg" {
                fedmsg += 1.0;
            } else {
                native += 1.0;
            }
            if let Some(origin) = &o.reply {
                self.reply(
                    router,
                    origin,
                    &Ack {
                        uuid: Some(o.uuid.to_string()),
                        status: AckStatus::Accepted,
                        seq: Some(self.seq),
                        reason: None,
                        message: None,
                    },
                );
            }
        }
        // Once per round: a counter update formats its series name.
        for (format, n) in [("laniakea", native), ("fedmsg", fedmsg)] {
            if n > 0.0 {
                self.metrics
                    .add("hark_relay_published_total", &[("format", format)], n);
            }
        }
    }

    fn read_fedmsg(&mut self, sub: &zmq::Socket) {
        let mut received = 0.0;
        // One clock reading per round: what is read here was all queued by now.
        let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
        for _ in 0..1024 {
            if recv_frames(sub, zmq::DONTWAIT, &mut self.inbound).is_err() {
                break;
            }
            received += 1.0;
            let first = match self.gate.check_fedmsg_passthrough(&self.inbound) {
                Ok(id) => self.dedupe.admit(&id, now).ok_or_else(|| id.into_owned()),
                Err(refused) => {
                    self.refusals.refuse("fedmsg", None, &refused.refusal);
                    continue;
                }
            };
            let uuid = match first {
                Ok(uuid) => uuid,
                Err(seen) => {
                    let refusal = Refusal::Duplicate { uuid: seen.clone() };
                    self.refusals.refuse("fedmsg", Some(&seen), &refusal);
                    continue;
                }
            };
            // Two frames: the check above refuses any other count.
            let (Some(body), Some(topic)) = (self.inbound.pop(), self.inbound.pop()) else {
                continue;
            };
            self.outbox.push(Outgoing {
                frames: [topic, body],
                uuid,
                received_ms: now_ms,
                format: "fedmsg",
                reply: None,
            });
        }
        // A refused message would otherwise stay in it, and pin its buffers, until the next.
        self.inbound.clear();
        if received > 0.0 {
            self.metrics.add(
                "hark_relay_received_total",
                &[("source", "fedmsg")],
                received,
            );
        }
    }

    fn refuse(
        &mut self,
        router: &zmq::Socket,
        source: &str,
        origin: &Origin,
        uuid: Option<&str>,
        refusal: &Refusal,
    ) {
        self.refusals.refuse(source, uuid, refusal);
        self.reply(
            router,
            origin,
            &Ack {
                uuid: uuid.map(str::to_string),
                status: AckStatus::Refused,
                seq: None,
                reason: Some(refusal.reason().into()),
                message: Some(refusal.to_string()),
            },
        );
    }

    fn reply(&self, router: &zmq::Socket, origin: &Origin, ack: &Ack) {
        let body = ack.to_bytes();
        let result = if origin.delimited {
            router.send_multipart(
                [origin.identity.as_slice(), b"", body.as_slice()],
                zmq::DONTWAIT,
            )
        } else {
            router.send_multipart([origin.identity.as_slice(), body.as_slice()], zmq::DONTWAIT)
        };
        // Laniakea emitters never read acks and may be gone already; that is fine.
        let _ = result;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stamp_is_the_canonical_json_of_its_fields() {
        for (relay, epoch, seq) in [("relay", "e", 1), ("r\u{e9}\"\\x", "", u64::MAX)] {
            let at = "2026-12-03T06:00:00.123456Z";
            let value = json!({"relay": relay, "epoch": epoch, "seq": seq, "received": at});
            assert_eq!(
                unsigned_stamp(relay, epoch, seq, at).expect("stamp"),
                canonical::to_vec(&value).expect("canonical")
            );
        }
    }
}
