//! The AMQP 0-9-1 source: one queue on a broker (RabbitMQ; Fedora's fedora-messaging bus),
//! consumed on the source's own thread with a current-thread tokio runtime for lapin.
//!
//! This file owns the connection (URL, TLS with a CA and a client certificate), declaring
//! the queue and its bindings (again after every reconnect, with backoff), prefetch, and
//! the mapping of a delivery to an [`Event`] (docs/formats.md, "AMQP"):
//! topic = routing key, `data` = the JSON body, uuid = `message_id`, time = the `sent-at`
//! header, every header under `headers.*`, and `broker` = the broker's configured name.
//!
//! Deliveries are acked by the jobs thread once their jobs are committed (through the
//! event's [`Ack`]), never here; a message that cannot become an event is rejected without
//! requeue at once (dead-lettered when the queue has a dead-letter exchange), logged and
//! counted, so it can neither loop nor block the queue. In `Auto` mode (tail, record) the
//! broker forgets a message as soon as it is sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use super::{Received, Sender, Source, TrySendError};
use crate::config::AmqpConfig;
use crate::event::{canonical, Ack, Event, Format, Settle};
use crate::metrics::Registry;

/// How often the source looks at its stop flag while nothing arrives.
const POLL: Duration = Duration::from_millis(250);
/// Reconnect backoff: the first wait, doubling up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// While admission is full: how long to wait before offering the delivery again.
const FULL_WAIT: Duration = Duration::from_millis(5);

/// Who settles deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consume {
    /// The jobs thread acks each delivery once its jobs are stored (`hark trigger`).
    Acked,
    /// The broker forgets a message once it is sent (`hark tail`, `hark record`).
    Auto,
}

/// A settlement on its way from the jobs thread back to the connection.
type Settlement = (lapin::Acker, Settle);

pub struct AmqpSource {
    config: AmqpConfig,
    url: String,
    tls: OwnedTLSConfig,
    consume: Consume,
    metrics: Registry,
}

/// Why a delivery cannot become an event: the `reason` label and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub reason: &'static str,
    pub message: String,
}

impl AmqpSource {
    /// Check the settings and read the TLS files now, so a bad path or a missing URL stops
    /// the daemon at start with the file named, not later in a reconnect loop.
    pub fn new(config: &AmqpConfig, consume: Consume, metrics: Registry) -> anyhow::Result<Self> {
        let url = checked_url(config)?;
        let tls = tls_config(config)?;
        Ok(AmqpSource {
            config: config.clone(),
            url,
            tls,
            consume,
            metrics,
        })
    }

    /// The URL with any password left out, for log lines.
    fn shown_url(&self) -> String {
        redact(&self.url)
    }

    /// What this source consumes, for a start-up log line: the broker's name and URL
    /// (without the password), the queue (or that the broker names one) and its bindings.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let queue = match c.queue.as_deref().filter(|q| !q.is_empty()) {
            Some(q) => format!("queue {q}"),
            None => "a server-named queue".to_string(),
        };
        let bindings: Vec<String> = c
            .bindings
            .iter()
            .flat_map(|(x, keys)| keys.iter().map(move |k| format!("{x}:{k}")))
            .collect();
        format!(
            "amqp broker {} at {}, {queue} bound to {}",
            c.name,
            self.shown_url(),
            bindings.join(" ")
        )
    }

    async fn serve(&self, out: Sender<Received>, stop: Arc<AtomicBool>) {
        let (settle_tx, mut settle_rx) = unbounded_channel::<Settlement>();
        let mut backoff = BACKOFF_FIRST;
        let broker = self.config.name.as_str();
        while !stop.load(Ordering::Relaxed) {
            let result = self
                .session(&out, &stop, &settle_tx, &mut settle_rx, &mut backoff)
                .await;
            self.metrics
                .set("hark_amqp_connected", &[("broker", broker)], 0.0);
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.metrics
                        .inc("hark_amqp_reconnects_total", &[("broker", broker)]);
                    warn!(broker = %broker, url = %self.shown_url(), "amqp broker {broker}: {e}; connecting again in {backoff:?}");
                    let until = tokio::time::Instant::now() + backoff;
                    while tokio::time::Instant::now() < until {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Settlements of the lost channel: their ackers are dead; drop them.
                        while settle_rx.try_recv().is_ok() {}
                        tokio::time::sleep(POLL.min(backoff)).await;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One connection: declare, bind, consume until the connection is lost (`Err`) or the
    /// source is stopped (`Ok`).
    async fn session(
        &self,
        out: &Sender<Received>,
        stop: &AtomicBool,
        settle_tx: &UnboundedSender<Settlement>,
        settle_rx: &mut UnboundedReceiver<Settlement>,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let c = &self.config;
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("hark {}", c.name)));
        let conn = Connection::connect_with_config(&self.url, props, clone_tls(&self.tls), runtime)
            .await
            .map_err(|e| format!("cannot connect to {}: {}", self.shown_url(), explain(&e)))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        channel
            .basic_qos(c.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("setting prefetch {}: {e}", c.prefetch))?;
        let named = c.queue.clone().filter(|q| !q.is_empty());
        let options = match named {
            Some(_) => QueueDeclareOptions {
                durable: c.durable,
                ..QueueDeclareOptions::default()
            },
            // Server-named: this connection's alone, gone with it.
            None => QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        };
        let mut arguments = FieldTable::default();
        if let Some(dlx) = &c.dead_letter_exchange {
            arguments.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from(dlx.as_str())),
            );
        }
        let queue = channel
            .queue_declare(
                ShortString::from(named.clone().unwrap_or_default()),
                options,
                arguments,
            )
            .await
            .map_err(|e| format!("declaring queue {:?}: {e}", named.unwrap_or_default()))?;
        let queue_name = queue.name().to_string();
        for (exchange, keys) in &c.bindings {
            for key in keys {
                channel
                    .queue_bind(
                        ShortString::from(queue_name.as_str()),
                        ShortString::from(exchange.as_str()),
                        ShortString::from(key.as_str()),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "binding queue {queue_name} to exchange {exchange:?} with {key:?}: {e}"
                        )
                    })?;
            }
        }
        let mut consumer = channel
            .basic_consume(
                ShortString::from(queue_name.as_str()),
                ShortString::from(format!("hark-{}", uuid::Uuid::new_v4())),
                BasicConsumeOptions {
                    no_ack: self.consume == Consume::Auto,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming from queue {queue_name}: {e}"))?;
        *backoff = BACKOFF_FIRST;
        let broker = c.name.as_str();
        self.metrics
            .set("hark_amqp_connected", &[("broker", broker)], 1.0);
        let bindings: Vec<String> = c
            .bindings
            .iter()
            .flat_map(|(x, keys)| keys.iter().map(move |k| format!("{x}:{k}")))
            .collect();
        info!(broker = %broker, queue = %queue_name, url = %self.shown_url(), "amqp broker {broker}: consuming from queue {queue_name} (bindings {}; prefetch {})", bindings.join(" "), c.prefetch);
        let mut tick = tokio::time::interval(POLL);
        use futures_lite::StreamExt as _;
        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(d)) => {
                        if !self.deliver(d, out, stop, settle_tx, settle_rx).await {
                            let _ = conn.close(200, ShortString::from("hark stopping")).await;
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(format!("connection lost: {}", explain(&e))),
                    None => return Err("the broker cancelled the consumer".into()),
                },
                Some((acker, how)) = settle_rx.recv() => settle(&acker, how).await,
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        let _ = conn.close(200, ShortString::from("hark stopping")).await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Map one delivery and hand it to admission (waiting for room, settling meanwhile);
    /// false once the source should stop.
    async fn deliver(
        &self,
        d: Delivery,
        out: &Sender<Received>,
        stop: &AtomicBool,
        settle_tx: &UnboundedSender<Settlement>,
        settle_rx: &mut UnboundedReceiver<Settlement>,
    ) -> bool {
        let broker = self.config.name.as_str();
        self.metrics
            .inc("hark_amqp_deliveries_total", &[("broker", broker)]);
        let mut event = match to_event(&self.config.name, &d) {
            Ok(event) => event,
            Err(poison) => {
                self.metrics.inc(
                    "hark_amqp_rejected_total",
                    &[("broker", broker), ("reason", poison.reason)],
                );
                warn!(broker = %broker, reason = poison.reason, routing_key = %d.routing_key, "amqp broker {broker}: rejecting a message that cannot become an event ({}); it is not requeued", poison.message);
                if self.consume == Consume::Acked {
                    settle(&d.acker, Settle::Reject).await;
                }
                return true;
            }
        };
        if self.consume == Consume::Acked {
            let (tx, acker) = (settle_tx.clone(), d.acker.clone());
            event.ack = Some(Ack::new(move |how| {
                let _ = tx.send((acker.clone(), how));
            }));
        }
        let mut item = Received::parsed(event, "amqp");
        loop {
            match out.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) if !stop.load(Ordering::Relaxed) => {
                    item = back;
                    // Keep settling while admission is full, so acks are not held back.
                    while let Ok((acker, how)) = settle_rx.try_recv() {
                        settle(&acker, how).await;
                    }
                    tokio::time::sleep(FULL_WAIT).await;
                }
                Err(_) => return false,
            }
        }
    }
}

impl Source for AmqpSource {
    fn name(&self) -> String {
        format!("source-amqp-{}", self.config.name)
    }

    fn run(self: Box<Self>, out: Sender<Received>, stop: Arc<AtomicBool>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("amqp source: cannot start its runtime: {e}");
                return;
            }
        };
        rt.block_on(self.serve(out, stop));
    }
}

async fn settle(acker: &lapin::Acker, how: Settle) {
    let result = match how {
        Settle::Ack => acker.ack(BasicAckOptions::default()).await,
        Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    match result {
        Ok(true) => {}
        // The channel it came on is gone: the broker has requeued it already.
        Ok(false) => {
            debug!(
                "amqp: a delivery's channel closed before it was settled; the broker redelivers it"
            )
        }
        Err(e) => debug!("amqp: settling a delivery: {e}"),
    }
}

/// A delivery as an event, or why it cannot be one.
pub fn to_event(broker: &str, d: &Delivery) -> Result<Event, Poison> {
    let topic = d.routing_key.as_str();
    if topic.is_empty() {
        return Err(Poison {
            reason: "no-routing-key",
            message: "the message has no routing key, which is its topic".into(),
        });
    }
    let text = std::str::from_utf8(&d.data).map_err(|e| Poison {
        reason: "not-utf8",
        message: format!("the body is not UTF-8 ({e})"),
    })?;
    let data: Value = serde_json::from_str(text).map_err(|e| Poison {
        reason: "malformed-json",
        message: format!("the body is not JSON ({e})"),
    })?;
    if let Some(n) = canonical::non_finite(&data) {
        return Err(Poison {
            reason: "non-finite-number",
            message: format!("the body holds {n}, beyond a double's range"),
        });
    }
    let headers = d
        .properties
        .headers()
        .as_ref()
        .map(table_to_json)
        .unwrap_or_else(|| Value::Object(Map::new()));
    let time = headers
        .get("sent-at")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            d.properties.timestamp().and_then(|ts| {
                chrono::DateTime::from_timestamp(i64::try_from(ts).ok()?, 0)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            })
        });
    let id = match d.properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.to_string(),
        _ => derived_id(topic, &d.data, time.as_deref()),
    };
    let envelope = envelope(topic, &id, &headers, &data, broker);
    let json = canonical::to_vec(&envelope).map_err(|e| Poison {
        reason: "malformed-json",
        message: format!("the message cannot be written as JSON ({e})"),
    })?;
    Ok(Event {
        topic: topic.to_string(),
        uuid: id,
        time,
        data,
        origin: None,
        author: None,
        signers: Vec::new(),
        format: Format::Amqp,
        relay: None,
        body: envelope,
        frames: vec![json],
        headers,
        source: Some(broker.to_string()),
        ack: None,
    })
}

/// The uuid of a message without a `message_id`: a UUIDv8 from SHA-256 over the routing
/// key, the body and the send time (`sent-at`, else the `timestamp` property). A fresh
/// random one would make a redelivery (its ack lost in a broker restart) look new and run
/// again; this one is the same each time the broker sends the same message, so the
/// store files it once per rule. The price: two messages alike in key, body and send
/// time (to the second, with only a `timestamp`) are taken as one (docs/formats.md).
pub fn derived_id(topic: &str, body: &[u8], time: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Lengths first, so that no two different triples hash the same bytes.
    for part in [topic.as_bytes(), body, time.unwrap_or("").as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// fedora-messaging's JSON form of a message (`fedora_messaging.message.dumps`: topic,
/// id, headers, body), plus the broker's name as `broker`.
pub fn envelope(topic: &str, id: &str, headers: &Value, body: &Value, broker: &str) -> Value {
    let mut m = Map::new();
    m.insert("body".into(), body.clone());
    m.insert("headers".into(), headers.clone());
    m.insert("id".into(), Value::String(id.into()));
    m.insert("broker".into(), Value::String(broker.into()));
    m.insert("topic".into(), Value::String(topic.into()));
    Value::Object(m)
}

/// AMQP field values as JSON: numbers stay numbers, strings strings, tables objects.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &AMQPValue) -> Value {
    fn float(f: f64) -> Value {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// JSON header values as AMQP fields (for the sinks): the inverse of [`table_to_json`].
pub fn json_to_table(headers: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(ShortString::from(k.as_str()), json_to_value(v));
    }
    t
}

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => {
            AMQPValue::FieldArray(a.iter().map(json_to_value).collect::<Vec<_>>().into())
        }
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

/// `amqp.url`, trimmed, if it is an amqp:// or amqps:// URL.
pub(crate) fn checked_url(c: &AmqpConfig) -> anyhow::Result<String> {
    let Some(url) = c.url.as_deref() else {
        anyhow::bail!("amqp.url is not set");
    };
    let url = url.trim().to_string();
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        anyhow::bail!("amqp.url {url:?} must start with amqp:// or amqps://");
    }
    Ok(url)
}

/// The TLS settings: the CA bundle that must have signed the broker's certificate, and
/// the client certificate and key (PEM) the broker may ask for.
pub(crate) fn tls_config(c: &AmqpConfig) -> anyhow::Result<OwnedTLSConfig> {
    let read = |what: &str, path: &Path| -> anyhow::Result<Vec<u8>> {
        std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("amqp.{what}: cannot read {}: {e}", path.display()))
    };
    let cert_chain = match &c.ca {
        Some(path) => Some(
            String::from_utf8(read("ca", path)?)
                .map_err(|_| anyhow::anyhow!("amqp.ca: {} is not a PEM file", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("cert", cert)?,
            key: read("key", key)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("amqp.cert and amqp.key go together: give both or neither"),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

pub(crate) fn clone_tls(t: &OwnedTLSConfig) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: t.identity.as_ref().map(|i| match i {
            OwnedIdentity::PKCS12 { der, password } => OwnedIdentity::PKCS12 {
                der: der.clone(),
                password: password.clone(),
            },
            OwnedIdentity::PKCS8 { pem, key } => OwnedIdentity::PKCS8 {
                pem: pem.clone(),
                key: key.clone(),
            },
        }),
        cert_chain: t.cert_chain.clone(),
    }
}

/// lapin's error with its cause, so a TLS refusal says which certificate check failed.
pub(crate) fn explain(e: &lapin::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    // rustls names the failed check; say which setting it is about.
    for (cause, hint) in [
        (
            "UnknownIssuer",
            "the broker's certificate is not signed by a CA in amqp.ca (or, unset, the system's roots)",
        ),
        (
            "NotValidForName",
            "the broker's certificate is not for the host name in amqp.url",
        ),
        (
            "CertificateRequired",
            "the broker asks for a client certificate: set amqp.cert and amqp.key",
        ),
        (
            "UnknownCA",
            "the broker does not trust the CA that signed amqp.cert",
        ),
    ] {
        if text.contains(cause) {
            text.push_str(&format!(" ({hint})"));
        }
    }
    text
}

/// `amqp://user:secret@host/vhost` as `amqp://user:***@host/vhost`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, pass)) if !pass.is_empty() => format!("{scheme}://{user}:***@{host}{path}"),
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Bindings given on the command line as `EXCHANGE=KEY` (or a bare KEY on `amq.topic`).
pub fn parse_bindings(flags: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for flag in flags {
        let (exchange, key) = flag.split_once('=').unwrap_or(("amq.topic", flag));
        out.entry(exchange.to_string())
            .or_default()
            .push(key.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use serde_json::json;

    fn delivery(key: &str, body: &[u8], props: BasicProperties) -> Delivery {
        let mut d = Delivery::mock(1, "amq.topic".into(), key.into(), false, body.to_vec());
        d.properties = props;
        d
    }

    #[test]
    fn a_fedora_messaging_message_maps_to_an_event() {
        let mut headers = FieldTable::default();
        headers.insert(
            "fedora_messaging_schema".into(),
            AMQPValue::LongString("bodhi.update.comment.v1".into()),
        );
        headers.insert(
            "sent-at".into(),
            AMQPValue::LongString("2019-07-29T17:18:37+00:00".into()),
        );
        headers.insert(
            "fedora_messaging_severity".into(),
            AMQPValue::LongLongInt(20),
        );
        headers.insert(
            "fedora_messaging_user_bowlofeggs".into(),
            AMQPValue::Boolean(true),
        );
        let props = BasicProperties::default()
            .with_message_id("f6b1e6d2-1b6a-4f4a-9a6f-3e6d1c0b2a11".into())
            .with_headers(headers);
        let d = delivery(
            "org.fedoraproject.prod.bodhi.update.comment",
            br#"{"comment": {"text": "works"}}"#,
            props,
        );
        let ev = to_event("fedora", &d).unwrap();
        assert_eq!(ev.topic, "org.fedoraproject.prod.bodhi.update.comment");
        assert_eq!(ev.uuid, "f6b1e6d2-1b6a-4f4a-9a6f-3e6d1c0b2a11");
        assert_eq!(ev.time.as_deref(), Some("2019-07-29T17:18:37+00:00"));
        assert_eq!(ev.data["comment"]["text"], "works");
        assert_eq!(ev.headers["fedora_messaging_severity"], 20);
        assert_eq!(ev.headers["fedora_messaging_user_bowlofeggs"], true);
        assert_eq!(ev.source.as_deref(), Some("fedora"));
        assert!(
            ev.signers.is_empty(),
            "the broker's messages carry no signature"
        );
        assert_eq!(&*ev.stdin_bytes(), br#"{"comment":{"text":"works"}}"#);
        // What the store keeps reads back as the same event.
        let back = Event::from_submission(ev.frames[0].clone()).unwrap();
        assert_eq!(back.format, Format::Amqp);
        assert_eq!((back.topic, back.uuid), (ev.topic, ev.uuid));
        assert_eq!(back.headers, ev.headers);
        assert_eq!(back.source.as_deref(), Some("fedora"));
        assert_eq!(back.time, ev.time);
    }

    #[test]
    fn poison_is_named() {
        let cases: [(&str, &[u8], &str); 3] = [
            ("t", b"{not json", "malformed-json"),
            ("t", &[0xff, 0xfe], "not-utf8"),
            ("", b"{}", "no-routing-key"),
        ];
        for (key, body, reason) in cases {
            let d = delivery(key, body, BasicProperties::default());
            assert_eq!(to_event("b", &d).unwrap_err().reason, reason);
        }
    }

    #[test]
    fn a_message_without_message_id_gets_the_same_uuid_each_time_it_is_sent() {
        let sent = |at: &str| {
            let mut headers = FieldTable::default();
            headers.insert("sent-at".into(), AMQPValue::LongString(at.into()));
            BasicProperties::default().with_headers(headers)
        };
        let a = to_event(
            "b",
            &delivery("t.x", b"{}", sent("2026-12-02T16:00:00+00:00")),
        )
        .unwrap();
        let again = to_event(
            "b",
            &delivery("t.x", b"{}", sent("2026-12-02T16:00:00+00:00")),
        )
        .unwrap();
        assert_eq!(a.uuid, again.uuid, "a redelivery keeps its uuid");
        assert!(uuid::Uuid::parse_str(&a.uuid).is_ok(), "{}", a.uuid);
        for other in [
            delivery("t.y", b"{}", sent("2026-12-02T16:00:00+00:00")),
            delivery("t.x", b"{\"n\":1}", sent("2026-12-02T16:00:00+00:00")),
            delivery("t.x", b"{}", sent("2026-12-02T16:00:01+00:00")),
            delivery("t.x", b"{}", BasicProperties::default()),
        ] {
            assert_ne!(to_event("b", &other).unwrap().uuid, a.uuid);
        }
        // The timestamp property stands in for a missing sent-at.
        let ts = |t: u64| BasicProperties::default().with_timestamp(t);
        let one = to_event("b", &delivery("t.x", b"{}", ts(1_700_000_000))).unwrap();
        let same = to_event("b", &delivery("t.x", b"{}", ts(1_700_000_000))).unwrap();
        let later = to_event("b", &delivery("t.x", b"{}", ts(1_700_000_001))).unwrap();
        assert_eq!(one.uuid, same.uuid);
        assert_ne!(one.uuid, later.uuid);
    }

    #[test]
    fn headers_round_trip_through_amqp_fields() {
        let h = json!({"a": 1, "b": "x", "c": true, "d": [1, "y"], "e": {"f": 2.5}, "g": null});
        let Value::Object(m) = &h else { unreachable!() };
        assert_eq!(table_to_json(&json_to_table(m)), h);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2F"),
            "amqp://guest:***@127.0.0.1:5672/%2F"
        );
        assert_eq!(
            redact("amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"),
            "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }

    #[test]
    fn bindings_from_flags() {
        let b = parse_bindings(&[
            "org.fedoraproject.prod.#".into(),
            "x=a.b".into(),
            "x=c".into(),
        ]);
        assert_eq!(b["amq.topic"], ["org.fedoraproject.prod.#"]);
        assert_eq!(b["x"], ["a.b", "c"]);
    }
}
