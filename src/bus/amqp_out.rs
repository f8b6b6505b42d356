//! The AMQP sink: messages published to an exchange of an AMQP 0-9-1 broker (RabbitMQ) in
//! fedora-messaging's format, so Fedora tooling (`fedora-messaging consume`, its callbacks)
//! reads them as any other message. Used for the trigger's `_hark.job.*` results
//! (`amqp.results_exchange`) and `hark relay --amqp-out` (every admitted event).
//!
//! This file owns the publisher thread (a current-thread tokio runtime for lapin, like the
//! source), its bounded queue, publisher confirms, and reconnecting with backoff. The
//! format: routing key = topic, body = the event's `data` as JSON, `message_id` = its uuid,
//! `content_type` application/json, persistent, and the headers fedora-messaging writes
//! (`fedora_messaging_schema`, `fedora_messaging_severity`, `priority`, `sent-at`) plus
//! whatever the caller adds (docs/formats.md, "AMQP sinks").
//!
//! A message is taken off the queue only once the broker confirmed it. Up to [`BATCH`] are
//! published before their confirms are awaited (one round trip per batch, not per message);
//! a message the broker nacks, or whose confirm was lost with the connection, is sent again
//! after the backoff (counted in `hark_amqp_out_retried_total{sink,reason}`), so a message
//! may arrive twice with the same `message_id`, never not at all while it is queued. While
//! the broker is away the queue holds up to [`CAPACITY`] and further messages are dropped,
//! logged once per outage and counted (`hark_amqp_out_dropped_total{sink}`), so a dead
//! broker never stalls the relay or the jobs thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{channel, error::TrySendError, Receiver, Sender};
use tracing::{info, warn};

use crate::config::AmqpConfig;
use crate::event::Frame;
use crate::metrics::Registry;
use crate::sources::amqp::{checked_url, clone_tls, explain, json_to_table, redact, tls_config};

/// Messages waiting for the broker at most.
pub const CAPACITY: usize = 1000;
/// Messages published before their confirms are awaited, at most.
pub const BATCH: usize = 100;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One message for the exchange.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub routing_key: String,
    pub message_id: String,
    pub body: Value,
    /// Extra headers (over the fedora-messaging ones).
    pub headers: Map<String, Value>,
    /// ISO 8601 send time for `sent-at`; now when unset.
    pub sent_at: Option<String>,
}

/// What the relay published (`[topic, json]` frames) as a message: the body is the
/// event's `data` (fedmsg: its `msg`), `sent-at` its `time` (fedmsg: `timestamp`), and the
/// headers say the format and the relay (`hark-format`, `hark-relay`).
pub fn from_frames<F: Frame>(
    topic: &str,
    uuid: &str,
    format: &str,
    frames: &[F],
    relay: &str,
) -> Outgoing {
    let envelope: Value = frames
        .get(1)
        .and_then(|f| serde_json::from_slice(&f[..]).ok())
        .unwrap_or(Value::Null);
    let (body, sent_at) = if format == "fedmsg" {
        let at = envelope
            .get("timestamp")
            .and_then(Value::as_f64)
            .and_then(|t| chrono::DateTime::from_timestamp_micros((t * 1e6) as i64))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false));
        (envelope.get("msg").cloned().unwrap_or(Value::Null), at)
    } else {
        let at = envelope
            .get("time")
            .and_then(Value::as_str)
            .map(str::to_string);
        (envelope.get("data").cloned().unwrap_or(Value::Null), at)
    };
    let mut headers = Map::new();
    headers.insert("hark-format".into(), Value::String(format.into()));
    headers.insert("hark-relay".into(), Value::String(relay.into()));
    Outgoing {
        routing_key: topic.to_string(),
        message_id: uuid.to_string(),
        body,
        headers,
        sent_at,
    }
}

/// The sending side; cheap to clone. Pushing never blocks.
#[derive(Clone)]
pub struct AmqpOut {
    tx: Sender<Outgoing>,
    sink: &'static str,
    metrics: Registry,
    /// Messages dropped since the publisher last connected: the first drop of an outage
    /// is logged, and the publisher reports the sum once the broker is back.
    dropping: Arc<AtomicU64>,
}

impl AmqpOut {
    /// Start publishing to `exchange` on the broker of `config` (its URL and TLS files);
    /// `sink` names it in logs and metrics ("results", "relay").
    pub fn spawn(
        config: &AmqpConfig,
        exchange: String,
        sink: &'static str,
        metrics: Registry,
    ) -> anyhow::Result<AmqpOut> {
        let url = checked_url(config)?;
        let tls = tls_config(config)?;
        let (tx, rx) = channel(CAPACITY);
        let dropping = Arc::new(AtomicU64::new(0));
        let thread = Publisher {
            url,
            tls,
            exchange,
            sink,
            name: config.name.clone(),
            metrics: metrics.clone(),
            dropping: dropping.clone(),
        };
        std::thread::Builder::new()
            .name(format!("amqp-out-{sink}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(thread.run(rx)),
                    Err(e) => tracing::error!("amqp {sink} sink: cannot start its runtime: {e}"),
                }
            })?;
        Ok(AmqpOut {
            tx,
            sink,
            metrics,
            dropping,
        })
    }

    /// Queue a message; when the queue is full (the broker away), it is dropped and counted.
    pub fn push(&self, m: Outgoing) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(m)) => {
                self.metrics
                    .inc("hark_amqp_out_dropped_total", &[("sink", self.sink)]);
                if self.dropping.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(sink = self.sink, topic = %m.routing_key, uuid = %m.message_id, "amqp {} sink: {CAPACITY} messages wait for the broker; dropping new ones (counted in hark_amqp_out_dropped_total) until it takes them again", self.sink);
                }
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

impl std::fmt::Debug for AmqpOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AmqpOut({})", self.sink)
    }
}

struct Publisher {
    url: String,
    tls: lapin::tcp::OwnedTLSConfig,
    exchange: String,
    sink: &'static str,
    name: String,
    metrics: Registry,
    dropping: Arc<AtomicU64>,
}

impl Publisher {
    async fn run(self, mut rx: Receiver<Outgoing>) {
        let mut backoff = BACKOFF_FIRST;
        // Taken off the queue, not yet confirmed: kept across reconnects, in order.
        let mut pending: VecDeque<Outgoing> = VecDeque::new();
        loop {
            match self.session(&mut rx, &mut pending, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(
                        sink = self.sink,
                        "amqp {} sink ({}): {e}; {} message(s) kept to send again; connecting again in {backoff:?}",
                        self.sink,
                        redact(&self.url),
                        pending.len()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One connection: publish with confirms until the queue closes (`Ok`) or the
    /// connection fails or the broker refuses a message (`Err`).
    async fn session(
        &self,
        rx: &mut Receiver<Outgoing>,
        pending: &mut VecDeque<Outgoing>,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let props = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("hark {} {} sink", self.name, self.sink),
        ));
        let conn = Connection::connect_with_config(&self.url, props, clone_tls(&self.tls), runtime)
            .await
            .map_err(|e| format!("cannot connect: {}", explain(&e)))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("enabling publisher confirms: {e}"))?;
        info!(
            sink = self.sink,
            "amqp {} sink: publishing to exchange {:?} of {}",
            self.sink,
            self.exchange,
            redact(&self.url)
        );
        let labels = [("sink", self.sink)];
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(m) => pending.push_back(m),
                    None => {
                        let _ = conn.close(200, ShortString::from("hark stopping")).await;
                        return Ok(());
                    }
                }
            }
            let mut caught_up = false;
            while pending.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => pending.push_back(m),
                    Err(_) => {
                        caught_up = true;
                        break;
                    }
                }
            }
            // Publish the batch, then await its confirms in order.
            let mut confirms = Vec::with_capacity(pending.len());
            let mut failed = None;
            for m in pending.iter() {
                let body = serde_json::to_vec(&m.body).unwrap_or_else(|_| b"null".to_vec());
                match channel
                    .basic_publish(
                        ShortString::from(self.exchange.as_str()),
                        ShortString::from(m.routing_key.as_str()),
                        BasicPublishOptions::default(),
                        &body,
                        properties(m),
                    )
                    .await
                {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => {
                        failed = Some(format!("publishing: {}", explain(&e)));
                        break;
                    }
                }
            }
            let mut confirmed = 0;
            for confirm in confirms {
                match confirm.await {
                    Ok(Confirmation::Nack(_)) => {
                        failed.get_or_insert_with(|| {
                            "the broker refused (nacked) a message".to_string()
                        });
                        break;
                    }
                    Ok(_) => confirmed += 1,
                    Err(e) => {
                        failed
                            .get_or_insert_with(|| format!("awaiting a confirm: {}", explain(&e)));
                        break;
                    }
                }
            }
            // The confirmed head of the batch is done; from the first refused or
            // unconfirmed message on, all are sent again (some of those after it may have
            // been taken: they arrive twice, with the same message_id).
            pending.drain(..confirmed);
            // Reset only once the broker takes messages: one that keeps refusing them (a
            // full queue with reject-publish) is asked again ever more rarely.
            if confirmed > 0 {
                *backoff = BACKOFF_FIRST;
            }
            self.metrics
                .add("hark_amqp_out_published_total", &labels, confirmed as f64);
            if let Some(why) = failed {
                let reason = if why.contains("nacked") {
                    "nacked"
                } else {
                    "unconfirmed"
                };
                self.metrics.add(
                    "hark_amqp_out_retried_total",
                    &[("sink", self.sink), ("reason", reason)],
                    pending.len() as f64,
                );
                let _ = conn.close(200, ShortString::from("sending again")).await;
                return Err(why);
            }
            // The backlog is gone: an outage (or overload) that dropped messages is over,
            // and the next drop is logged again.
            let dropped = if caught_up {
                self.dropping.swap(0, Ordering::Relaxed)
            } else {
                0
            };
            if dropped > 0 {
                info!(
                    sink = self.sink,
                    "amqp {} sink: the broker takes messages again; {dropped} were dropped meanwhile",
                    self.sink
                );
            }
        }
    }
}

/// fedora-messaging's properties of a message: persistent JSON, the id, and its headers.
pub fn properties(m: &Outgoing) -> BasicProperties {
    let mut headers = Map::new();
    headers.insert("fedora_messaging_schema".into(), "base.message".into());
    headers.insert("fedora_messaging_severity".into(), 20.into());
    headers.insert("priority".into(), 0.into());
    let sent_at = m.sent_at.clone().unwrap_or_else(|| {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    });
    headers.insert("sent-at".into(), Value::String(sent_at));
    for (k, v) in &m.headers {
        headers.insert(k.clone(), v.clone());
    }
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(m.message_id.as_str()))
        .with_headers(json_to_table(&headers))
}
