//! `hark relay`: accept submissions and fedmsg publications, publish what passes.
//!
//! Threads: one socket thread owns every libzmq socket (submit ROUTER, publish PUB, fedmsg
//! SUB, and an inproc doorbell); `workers` threads verify and countersign native events,
//! which is where the CPU goes. Submissions carry a ticket so that results are published
//! in arrival order whatever worker finishes first. The socket thread then drops duplicate
//! uuids, stamps `unsigned: {relay, epoch, seq, received}`, publishes and acks.
//!
//! fedmsg frames from the inbound SUB are checked (two frames, JSON, frame 0 equal to the
//! body's topic, size) and forwarded byte for byte: fedmsg signatures cover re-serialized
//! JSON that only fedmsg's own consumers can check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use serde_json::json;
use tracing::{info, warn};

use super::ack::{Ack, AckStatus};
use super::heartbeat::Heartbeat;
use super::socket::{bind_all, new_socket};
use crate::admit::{Counters, Dedupe, Gate, Refusal, Refusals, Refused, TrustPolicy};
use crate::config::{RelayConfig, TrustConfig, ZmqConfig};
use crate::event::keys::SigningKey;
use crate::event::{canonical, sign, Event};
use crate::metrics::Registry;

const DOORBELL: &str = "inproc://hark-relay-doorbell";
/// Submissions waiting for a worker; beyond this the ROUTER's own queue absorbs bursts.
const QUEUE_DEPTH: usize = 4096;

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
    outcome: Result<Event, Refused>,
}

/// Admission, then the countersignature: the CPU-heavy part, on a worker thread.
fn verify(
    gate: &Gate,
    key: Option<&SigningKey>,
    frame: Vec<u8>,
    received: DateTime<Utc>,
) -> Result<Event, Refused> {
    let mut event = gate.check_submission(frame, received)?;
    if let Some(key) = key {
        sign::sign(&mut event.body, key).map_err(|e| Refused {
            uuid: Some(event.uuid.clone()),
            refusal: Refusal::Envelope(crate::event::EnvelopeError::MalformedJson(e.to_string())),
        })?;
    }
    Ok(event)
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
    for sub in jobs {
        let outcome = verify(&gate, key.as_ref(), sub.frame, sub.received);
        let verdict = Verdict {
            ticket: sub.ticket,
            origin: sub.origin,
            received: sub.received,
            outcome,
        };
        if results.send(verdict).is_err() {
            return;
        }
        // A full doorbell means the socket thread already has wake-ups pending.
        let _ = doorbell.send(&b""[..], zmq::DONTWAIT);
    }
}

/// The socket thread's state.
struct Relay {
    opts: RelayOptions,
    metrics: Registry,
    epoch: String,
    seq: u64,
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
    let ctx = zmq::Context::new();
    let router = new_socket(&ctx, zmq::ROUTER, &opts.zmq)?;
    // A hard backstop far above the configured limit: libzmq drops the connection of a peer
    // that sends more, before buffering it; anything between is refused and counted below.
    router.set_maxmsgsize(
        i64::try_from(opts.max_message_size.saturating_mul(16)).unwrap_or(i64::MAX),
    )?;
    bind_all(&router, &opts.submit, "submit")?;
    let publisher = new_socket(&ctx, zmq::PUB, &opts.zmq)?;
    bind_all(&publisher, &opts.publish, "publish")?;
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
        "relay ready"
    );
    ready();

    let mut relay = Relay {
        dedupe: Dedupe::new(opts.dedupe_window, opts.dedupe_capacity),
        refusals: Refusals::new(metrics.clone(), Counters::RELAY),
        gate,
        opts,
        metrics,
        epoch: uuid::Uuid::new_v4().to_string(),
        seq: 0,
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
        let mut items = vec![
            router.as_poll_item(if job_tx.len() < QUEUE_DEPTH {
                zmq::POLLIN
            } else {
                zmq::PollEvents::empty()
            }),
            doorbell.as_poll_item(zmq::POLLIN),
        ];
        if let Some(sub) = &fedmsg {
            items.push(sub.as_poll_item(zmq::POLLIN));
        }
        match zmq::poll(&mut items, 200) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e).context("polling relay sockets"),
        }
        let (submit_ready, bell_ready) = (items[0].is_readable(), items[1].is_readable());
        let fedmsg_ready = items.get(2).is_some_and(|i| i.is_readable());
        drop(items);
        if bell_ready {
            while doorbell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        }
        while let Ok(verdict) = result_rx.try_recv() {
            relay.pending.insert(verdict.ticket, verdict);
        }
        relay.release(&router, &publisher);
        if submit_ready {
            relay.read_submissions(&router, &job_tx);
        }
        if let (true, Some(sub)) = (fedmsg_ready, &fedmsg) {
            relay.read_fedmsg(sub, &publisher);
        }
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
    Ok(())
}

impl Relay {
    fn heartbeat(&self, publisher: &zmq::Socket) {
        let beat = Heartbeat::new(&self.opts.name, &self.epoch, self.seq);
        if let Err(e) = publisher.send_multipart(beat.to_frames(), zmq::DONTWAIT) {
            warn!("cannot publish a heartbeat: {e}");
        }
    }

    /// Read what the ROUTER has queued (bounded, so publishing never starves).
    fn read_submissions(&mut self, router: &zmq::Socket, jobs: &Sender<Submission>) {
        for _ in 0..1024 {
            let Ok(mut frames) = router.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            self.metrics
                .inc("hark_relay_received_total", &[("source", "submit")]);
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
    fn release(&mut self, router: &zmq::Socket, publisher: &zmq::Socket) {
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
                Ok(event) => {
                    self.publish_native(router, publisher, verdict.origin, verdict.received, event)
                }
            }
        }
    }

    fn publish_native(
        &mut self,
        router: &zmq::Socket,
        publisher: &zmq::Socket,
        origin: Origin,
        received: DateTime<Utc>,
        mut event: Event,
    ) {
        if !self.dedupe.first_seen(&event.uuid, Instant::now()) {
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
        }
        self.seq += 1;
        if let Some(obj) = event.body.as_object_mut() {
            obj.insert(
                "unsigned".into(),
                json!({
                    "relay": self.opts.name,
                    "epoch": self.epoch,
                    "seq": self.seq,
                    "received": received.to_rfc3339_opts(SecondsFormat::Micros, true),
                }),
            );
        }
        let bytes = match canonical::to_vec(&event.body) {
            Ok(b) => b,
            Err(e) => {
                let refusal =
                    Refusal::Envelope(crate::event::EnvelopeError::MalformedJson(e.to_string()));
                self.refuse(router, "submitted", &origin, Some(&event.uuid), &refusal);
                return;
            }
        };
        if let Err(e) = publisher.send_multipart([event.topic.as_bytes(), bytes.as_slice()], 0) {
            warn!(uuid = %event.uuid, "cannot publish: {e}");
        }
        self.metrics
            .inc("hark_relay_published_total", &[("format", "laniakea")]);
        self.reply(
            router,
            &origin,
            &Ack {
                uuid: Some(event.uuid),
                status: AckStatus::Accepted,
                seq: Some(self.seq),
                reason: None,
                message: None,
            },
        );
    }

    fn read_fedmsg(&mut self, sub: &zmq::Socket, publisher: &zmq::Socket) {
        for _ in 0..1024 {
            let Ok(frames) = sub.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            self.metrics
                .inc("hark_relay_received_total", &[("source", "fedmsg")]);
            let uuid = match self.gate.check_fedmsg_passthrough(&frames) {
                Ok(id) => id,
                Err(refused) => {
                    self.refusals.refuse("fedmsg", None, &refused.refusal);
                    continue;
                }
            };
            if !self.dedupe.first_seen(&uuid, Instant::now()) {
                self.refusals.refuse(
                    "fedmsg",
                    Some(&uuid),
                    &Refusal::Duplicate { uuid: uuid.clone() },
                );
                continue;
            }
            if let Err(e) = publisher.send_multipart(&frames, 0) {
                warn!(uuid = %uuid, "cannot publish: {e}");
            }
            self.metrics
                .inc("hark_relay_published_total", &[("format", "fedmsg")]);
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
