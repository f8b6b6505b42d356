//! The submitting side: build a Laniakea event, sign it, send it to a relay's submit socket
//! and wait for the ack. Resends the same event (same uuid) until acked or out of time; the
//! relay's dedupe turns a resend after a lost ack into a harmless `duplicate`.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::ack::{Ack, AckStatus};
use super::socket::new_socket;
use crate::config::ZmqConfig;
use crate::event::keys::SigningKey;
use crate::event::{canonical, sign};

/// A new, signed Laniakea event 1.0.
pub fn build_event(
    tag: &str,
    data: Value,
    key: &SigningKey,
    origin: Option<&str>,
    author: Option<&str>,
) -> Result<Value, sign::SignError> {
    let mut event = json!({
        "tag": tag,
        "uuid": uuid::Uuid::now_v7().to_string(),
        "format": "1.0",
        "time": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": data,
    });
    if let Some(obj) = event.as_object_mut() {
        if let Some(o) = origin {
            obj.insert("origin".into(), o.into());
        }
        if let Some(a) = author {
            obj.insert("author".into(), a.into());
        }
    }
    sign::sign(&mut event, key)?;
    Ok(event)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no ack from relay {endpoint} within {waited:?}: check that `hark relay` runs and listens there (its submit socket), and that no firewall blocks the port")]
    Timeout { endpoint: String, waited: Duration },
    #[error("relay {endpoint} refused the event ({reason}): {message}")]
    Refused {
        endpoint: String,
        reason: String,
        message: String,
    },
    #[error("ZeroMQ error talking to {endpoint}: {source}")]
    Zmq {
        endpoint: String,
        source: zmq::Error,
    },
}

/// Submit `event` and wait for its ack.
pub fn submit(
    endpoint: &str,
    event: &Value,
    timeout: Duration,
    zmq_cfg: &ZmqConfig,
) -> Result<Ack, PublishError> {
    let zmq_err = |source| PublishError::Zmq {
        endpoint: endpoint.to_string(),
        source,
    };
    let uuid = event
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let body = canonical::to_vec(event).unwrap_or_else(|_| event.to_string().into_bytes());
    let ctx = zmq::Context::new();
    let socket = new_socket(&ctx, zmq::DEALER, zmq_cfg).map_err(zmq_err)?;
    // Do not hold the process open for unsent resends once we have our answer.
    socket.set_linger(0).map_err(zmq_err)?;
    socket.connect(endpoint).map_err(zmq_err)?;
    let started = Instant::now();
    let resend_every = Duration::from_secs(1);
    let mut last_send: Option<Instant> = None;
    loop {
        if last_send.is_none_or(|t| t.elapsed() >= resend_every) {
            socket
                .send(body.as_slice(), zmq::DONTWAIT)
                .or_else(|e| match e {
                    zmq::Error::EAGAIN => Ok(()),
                    e => Err(zmq_err(e)),
                })?;
            last_send = Some(Instant::now());
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(PublishError::Timeout {
                endpoint: endpoint.to_string(),
                waited: timeout,
            });
        }
        let wait = remaining.min(resend_every);
        if socket
            .poll(zmq::POLLIN, i64::try_from(wait.as_millis()).unwrap_or(1000))
            .map_err(zmq_err)?
            == 0
        {
            continue;
        }
        let frame = socket.recv_bytes(0).map_err(zmq_err)?;
        let Ok(ack) = serde_json::from_slice::<Ack>(&frame) else {
            continue;
        };
        if ack.uuid.as_deref().is_some_and(|u| u != uuid) {
            continue;
        }
        return match ack.status {
            AckStatus::Accepted | AckStatus::Duplicate => Ok(ack),
            AckStatus::Refused => Err(PublishError::Refused {
                endpoint: endpoint.to_string(),
                reason: ack.reason.unwrap_or_default(),
                message: ack.message.unwrap_or_default(),
            }),
        };
    }
}
