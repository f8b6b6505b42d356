//! The submitting side: build a Laniakea event, sign it, send it to a relay's submit socket
//! and wait for the ack. Resends the same event (same uuid) until acked or out of time; the
//! relay's dedupe turns a resend after a lost ack into a harmless `duplicate`.
//!
//! Several relays are submitted to at once (subscribers drop the copies by uuid), so no
//! single relay is a point of failure. A Laniakea Lighthouse never acks and never dedupes,
//! so it gets the event exactly once, and publication is confirmed by watching its PUB
//! socket for the uuid instead.
//!
//! Also the publisher's checks on endpoints before connecting, and telling a silent relay
//! apart from nothing listening and from a socket of the wrong kind (libzmq retries all
//! three without a word).

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::ack::{Ack, AckStatus};
use super::socket::new_socket;
use crate::config::ZmqConfig;
use crate::event::keys::SigningKey;
use crate::event::{canonical, sign};

/// The time format of events this publisher signs.
fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A new, signed Laniakea event 1.0.
pub fn build_event(
    tag: &str,
    data: Value,
    key: &SigningKey,
    origin: Option<&str>,
    author: Option<&str>,
) -> Result<Value, sign::SignError> {
    let mut event = unsigned_event(tag, data, origin, author);
    sign::sign(&mut event, key)?;
    Ok(event)
}

/// A new event, not signed yet: a fresh uuid (v7, so it sorts by time) and `time`.
pub fn unsigned_event(tag: &str, data: Value, origin: Option<&str>, author: Option<&str>) -> Value {
    let mut event = json!({
        "tag": tag,
        "uuid": uuid::Uuid::now_v7().to_string(),
        "format": "1.0",
        "time": now_text(),
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
    event
}

/// Re-stamp a spooled event that is older than the relays' freshness window: the same
/// uuid, tag, data, origin and author, a fresh `time`, the first time kept (signed) under
/// `spooled_time`, and a new signature by `key`. Replay protection stays as it is for
/// everyone else: only the key's holder can re-stamp, and the unchanged uuid lets relays and
/// subscribers drop a copy that did get through before.
pub fn restamp(event: &Value, key: &SigningKey) -> Result<Value, sign::SignError> {
    let mut fresh = event.clone();
    if let Some(obj) = fresh.as_object_mut() {
        obj.remove("signatures");
        obj.remove("unsigned");
        if !obj.contains_key("spooled_time") {
            if let Some(first) = obj.get("time").cloned() {
                obj.insert("spooled_time".into(), first);
            }
        }
        obj.insert("time".into(), now_text().into());
    }
    sign::sign(&mut fresh, key)?;
    Ok(fresh)
}

/// Where an event is submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A hark relay: resend until it acks.
    Acking { submit: String },
    /// A relay that never acks (Laniakea's Lighthouse): send once, confirm on its PUB.
    Watched { submit: String, publish: String },
}

impl Target {
    pub fn submit(&self) -> &str {
        match self {
            Target::Acking { submit } | Target::Watched { submit, .. } => submit,
        }
    }

    /// `SUBMIT,PUBLISH` endpoints of a relay that never acks.
    pub fn parse_watched(text: &str) -> Result<Target, String> {
        match text.split_once(',') {
            Some((submit, publish)) if !submit.is_empty() && !publish.is_empty() => {
                Ok(Target::Watched {
                    submit: submit.to_string(),
                    publish: publish.to_string(),
                })
            }
            _ => Err(format!(
                "{text:?}: give the submit and the publish endpoint, e.g. tcp://lighthouse:5571,tcp://lighthouse:5572"
            )),
        }
    }
}

/// Check how an endpoint the publisher will connect to is written, so that a habit such as
/// `127.0.0.1:5571` (no `tcp://`) gets a message saying what to write, where libzmq would
/// only say "Invalid argument". Other transports (`ipc://`, `inproc://`, ...) are left to
/// libzmq. Whether the host resolves is [`resolve`]'s question, asked per submission: a
/// name that fails to resolve may be a DNS outage, and the event is then spooled.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some((scheme, address)) = endpoint.split_once("://") else {
        let looks_tcp = endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        return Err(if looks_tcp {
            format!("{endpoint}: write tcp://{endpoint}")
        } else {
            format!("{endpoint}: not a ZeroMQ endpoint; write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5571")
        });
    };
    if scheme != "tcp" {
        return Ok(());
    }
    // libzmq's `tcp://SOURCE;DEST` form: the destination is what is connected to.
    let address = address.rsplit_once(';').map_or(address, |(_, dest)| dest);
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "{endpoint}: no port; write tcp://{address}:PORT, e.g. tcp://{address}:5571"
        ));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "{endpoint}: {port:?} is not a port number; write tcp://HOST:PORT, e.g. tcp://{host}:5571"
            ))
        }
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host == "*" {
        return Err(format!(
            "{endpoint}: no host to connect to; write tcp://HOST:PORT, e.g. tcp://127.0.0.1:{port}"
        ));
    }
    Ok(())
}

/// Resolve a `tcp://` endpoint's host before libzmq does, which would fail with only
/// "Invalid argument". Other transports, and forms [`check_endpoint`] refuses, pass.
pub fn resolve(endpoint: &str) -> Result<(), PublishError> {
    let Some(address) = endpoint.strip_prefix("tcp://") else {
        return Ok(());
    };
    let address = address.rsplit_once(';').map_or(address, |(_, dest)| dest);
    let Some((host, Ok(port))) = address.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()))
    else {
        return Ok(());
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let unresolved = |reason: String| PublishError::Unresolvable {
        endpoint: endpoint.to_string(),
        host: host.to_string(),
        reason,
    };
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(_) => Ok(()),
            None => Err(unresolved("no address".into())),
        },
        Err(e) => Err(unresolved(e.to_string())),
    }
}

/// Once one relay has the event, the others still get twice as long as it took, and at
/// least this: healthy relays answer in about the same time, a dead one never does.
const OTHERS_GRACE: Duration = Duration::from_millis(100);

/// Submit `event` to every target at once and collect each answer. Returns soon after the
/// first relay has it (see [`OTHERS_GRACE`]), so a relay that is down costs a publisher
/// little while another one answers.
pub fn submit_all(
    targets: &[Target],
    event: &Value,
    timeout: Duration,
    zmq_cfg: &ZmqConfig,
) -> Vec<(Target, Result<Ack, PublishError>)> {
    let give_up = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, target) in targets.iter().enumerate() {
            let (tx, give_up) = (tx.clone(), &give_up);
            scope.spawn(move || {
                let result = match target {
                    Target::Acking { submit: ep } if crate::http::client::is_http(ep) => {
                        crate::http::client::submit_until(ep, event, timeout, give_up)
                    }
                    Target::Acking { submit: ep } => {
                        submit_until(ep, event, timeout, zmq_cfg, give_up)
                    }
                    Target::Watched {
                        submit: ep,
                        publish,
                    } => submit_watched(ep, publish, event, timeout, zmq_cfg, give_up),
                };
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        let mut results: Vec<Option<Result<Ack, PublishError>>> =
            targets.iter().map(|_| None).collect();
        let mut grace_until: Option<Instant> = None;
        loop {
            let next = match grace_until {
                None => rx.recv().ok(),
                Some(until) => rx
                    .recv_timeout(until.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            let Some((i, result)) = next else { break };
            if result.is_ok() && grace_until.is_none() {
                grace_until = Some(Instant::now() + OTHERS_GRACE.max(started.elapsed() * 2));
            }
            results[i] = Some(result);
        }
        // Whoever has not answered by now stops within a poll interval.
        give_up.store(true, Ordering::Relaxed);
        for (i, result) in rx.iter() {
            results[i].get_or_insert(result);
        }
        targets
            .iter()
            .cloned()
            .zip(results)
            .map(|(target, result)| {
                let result = result.unwrap_or_else(|| {
                    Err(PublishError::Timeout {
                        endpoint: target.submit().to_string(),
                        waited: timeout,
                    })
                });
                (target, result)
            })
            .collect()
    })
}

/// Send `event` once to a relay that never acks, and wait until it appears on the relay's
/// PUB socket. The SUB is connected (handshake done) before the event is sent, so the
/// event cannot pass by unseen; a relay that drops it, or is down, ends in a timeout.
pub fn submit_watched(
    submit_ep: &str,
    publish_ep: &str,
    event: &Value,
    timeout: Duration,
    zmq_cfg: &ZmqConfig,
    give_up: &AtomicBool,
) -> Result<Ack, PublishError> {
    let err = |endpoint: &str| {
        let endpoint = endpoint.to_string();
        move |source| PublishError::Zmq { endpoint, source }
    };
    let uuid = event
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let tag = event.get("tag").and_then(Value::as_str).unwrap_or_default();
    resolve(publish_ep)?;
    resolve(submit_ep)?;
    let started = Instant::now();
    let ctx = zmq::Context::new();
    let sub = new_socket(&ctx, zmq::SUB, zmq_cfg).map_err(err(publish_ep))?;
    sub.set_linger(0).map_err(err(publish_ep))?;
    sub.set_subscribe(tag.as_bytes()).map_err(err(publish_ep))?;
    let monitor = "inproc://hark-publish-watch";
    sub.monitor(monitor, zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
        .map_err(err(publish_ep))?;
    let events = ctx.socket(zmq::PAIR).map_err(err(publish_ep))?;
    events.connect(monitor).map_err(err(publish_ep))?;
    sub.connect(publish_ep).map_err(err(publish_ep))?;
    let timed_out = || PublishError::Timeout {
        endpoint: submit_ep.to_string(),
        waited: timeout,
    };
    let left = |started: Instant| {
        i64::try_from(timeout.saturating_sub(started.elapsed()).as_millis()).unwrap_or(0)
    };
    if events
        .poll(zmq::POLLIN, left(started))
        .map_err(err(publish_ep))?
        == 0
    {
        return Err(timed_out());
    }
    // libzmq sends the subscription right after the handshake but gives no receipt; a
    // moment lets the publisher apply it before our event reaches it.
    std::thread::sleep(Duration::from_millis(100));
    let body = canonical::to_vec(event).unwrap_or_else(|_| event.to_string().into_bytes());
    let dealer = new_socket(&ctx, zmq::DEALER, zmq_cfg).map_err(err(submit_ep))?;
    dealer.set_linger(1000).map_err(err(submit_ep))?;
    dealer.connect(submit_ep).map_err(err(submit_ep))?;
    // Once only: this relay does not dedupe, so a resend would be a second event.
    dealer.send(body.as_slice(), 0).map_err(err(submit_ep))?;
    loop {
        let wait = left(started);
        if wait <= 0 || give_up.load(Ordering::Relaxed) {
            return Err(timed_out());
        }
        if sub
            .poll(zmq::POLLIN, wait.min(POLL_MS))
            .map_err(err(publish_ep))?
            == 0
        {
            continue;
        }
        let frames = sub.recv_multipart(0).map_err(err(publish_ep))?;
        let seen = frames
            .last()
            .and_then(|f| serde_json::from_slice::<Value>(f).ok())
            .is_some_and(|v| v.get("uuid").and_then(Value::as_str) == Some(uuid));
        if seen {
            return Ok(Ack {
                uuid: Some(uuid.to_string()),
                status: AckStatus::Accepted,
                seq: None,
                reason: None,
                message: None,
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no ack from relay {endpoint} within {waited:?}: check that `hark relay` runs and listens there (its submit socket), and that no firewall blocks the port")]
    Timeout { endpoint: String, waited: Duration },
    #[error("no ack from relay {endpoint} within {waited:?}: nothing listens there (connection refused); check that `hark relay` runs on that host and that its submit socket (relay.submit) uses that port")]
    NothingListens { endpoint: String, waited: Duration },
    #[error("no ack from relay {endpoint} within {waited:?}: something accepts connections there but is not a relay's submit socket (the ZeroMQ handshake {}); is it the relay's publish port, or another service? Give the relay's submit endpoint (relay.submit)", if *.handshake_failed { "failed" } else { "never completed" })]
    NotSubmitSocket {
        endpoint: String,
        waited: Duration,
        handshake_failed: bool,
    },
    #[error("relay {endpoint} refused the event ({reason}): {message}")]
    Refused {
        endpoint: String,
        reason: String,
        message: String,
    },
    #[error("cannot resolve host {host:?} of relay {endpoint} ({reason}): check the name, and this machine's DNS")]
    Unresolvable {
        endpoint: String,
        host: String,
        reason: String,
    },
    #[error("no ack from relay {endpoint} over HTTP: {reason}")]
    Http { endpoint: String, reason: String },
    #[error("ZeroMQ error talking to {endpoint}: {source}")]
    Zmq {
        endpoint: String,
        source: zmq::Error,
    },
}

/// What a publisher's connection to one relay did, from libzmq's socket monitor.
#[derive(Debug, Default)]
struct Connection {
    retried: bool,
    connected: bool,
    handshake_ok: bool,
    handshake_failed: bool,
}

impl Connection {
    /// One monitor message: `[u16 event, u32 value]` (native order), then the endpoint.
    fn note(&mut self, frames: &[Vec<u8>]) {
        let Some(event) = super::socket::monitor_event(frames) else {
            return;
        };
        let is = |e: zmq::SocketEvent| event == e as u16;
        if is(zmq::SocketEvent::CONNECT_RETRIED) {
            self.retried = true;
        } else if is(zmq::SocketEvent::CONNECTED) {
            self.connected = true;
        } else if is(zmq::SocketEvent::HANDSHAKE_SUCCEEDED) {
            self.handshake_ok = true;
        } else if is(zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL)
            || is(zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL)
            || is(zmq::SocketEvent::HANDSHAKE_FAILED_AUTH)
        {
            self.handshake_failed = true;
        }
    }

    /// The error for a relay that never acked, as specific as what was seen allows.
    fn silence(&self, endpoint: &str, waited: Duration) -> PublishError {
        let endpoint = endpoint.to_string();
        if self.handshake_ok {
            PublishError::Timeout { endpoint, waited }
        } else if self.connected {
            PublishError::NotSubmitSocket {
                endpoint,
                waited,
                handshake_failed: self.handshake_failed,
            }
        } else if self.retried {
            PublishError::NothingListens { endpoint, waited }
        } else {
            PublishError::Timeout { endpoint, waited }
        }
    }
}

/// How often a waiting publisher looks at its give-up flag.
const POLL_MS: i64 = 100;

/// Submit `event` and wait for its ack.
pub fn submit(
    endpoint: &str,
    event: &Value,
    timeout: Duration,
    zmq_cfg: &ZmqConfig,
) -> Result<Ack, PublishError> {
    submit_until(endpoint, event, timeout, zmq_cfg, &AtomicBool::new(false))
}

/// [`submit`], ending early (as a timeout) once `give_up` is set.
pub fn submit_until(
    endpoint: &str,
    event: &Value,
    timeout: Duration,
    zmq_cfg: &ZmqConfig,
    give_up: &AtomicBool,
) -> Result<Ack, PublishError> {
    let zmq_err = |source| PublishError::Zmq {
        endpoint: endpoint.to_string(),
        source,
    };
    resolve(endpoint)?;
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
    // What the connection did, so that silence can be told apart: nothing listening, the
    // wrong kind of socket, or a relay that does not answer. Connected before `connect`
    // since libzmq drops events nobody is there to read.
    let monitor = "inproc://hark-publish-connection";
    socket
        .monitor(
            monitor,
            (zmq::SocketEvent::CONNECTED as u16
                | zmq::SocketEvent::CONNECT_RETRIED as u16
                | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16
                | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16) as i32,
        )
        .map_err(zmq_err)?;
    let events = ctx.socket(zmq::PAIR).map_err(zmq_err)?;
    events.connect(monitor).map_err(zmq_err)?;
    let mut seen = Connection::default();
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
        if remaining.is_zero() || give_up.load(Ordering::Relaxed) {
            return Err(seen.silence(endpoint, timeout));
        }
        let wait = remaining.min(Duration::from_millis(POLL_MS as u64));
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            events.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, i64::try_from(wait.as_millis()).unwrap_or(1000)).map_err(zmq_err)?;
        let (ack_ready, event_ready) = (items[0].is_readable(), items[1].is_readable());
        if event_ready {
            while let Ok(frames) = events.recv_multipart(zmq::DONTWAIT) {
                seen.note(&frames);
            }
        }
        if !ack_ready {
            continue;
        }
        let frame = socket.recv_bytes(0).map_err(zmq_err)?;
        let Ok(ack) = serde_json::from_slice::<Ack>(&frame) else {
            continue;
        };
        if ack.uuid.as_deref().is_some_and(|u| u != uuid) {
            continue;
        }
        return ack_result(endpoint, ack);
    }
}

/// A relay's ack as the publisher's outcome: accepted and duplicate are published.
pub fn ack_result(endpoint: &str, ack: Ack) -> Result<Ack, PublishError> {
    match ack.status {
        AckStatus::Accepted | AckStatus::Duplicate => Ok(ack),
        AckStatus::Refused => Err(PublishError::Refused {
            endpoint: endpoint.to_string(),
            reason: ack.reason.unwrap_or_default(),
            message: ack.message.unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_transport_get_the_fix() {
        assert_eq!(
            check_endpoint("127.0.0.1:5571"),
            Err("127.0.0.1:5571: write tcp://127.0.0.1:5571".into())
        );
        assert_eq!(
            check_endpoint("relay.example:5571"),
            Err("relay.example:5571: write tcp://relay.example:5571".into())
        );
        assert!(check_endpoint("relay")
            .unwrap_err()
            .contains("tcp://HOST:PORT"));
    }

    #[test]
    fn tcp_endpoints_need_a_port_and_a_host_that_resolves() {
        assert_eq!(check_endpoint("tcp://127.0.0.1:5571"), Ok(()));
        assert_eq!(check_endpoint("tcp://[::1]:5571"), Ok(()));
        assert_eq!(check_endpoint("tcp://localhost:5571"), Ok(()));
        assert_eq!(check_endpoint("ipc:///run/hark/submit"), Ok(()));
        assert!(check_endpoint("tcp://127.0.0.1")
            .unwrap_err()
            .contains("no port"));
        assert!(check_endpoint("tcp://127.0.0.1:x")
            .unwrap_err()
            .contains("not a port number"));
        assert!(check_endpoint("tcp://127.0.0.1:0")
            .unwrap_err()
            .contains("not a port number"));
        assert!(check_endpoint("tcp://*:5571")
            .unwrap_err()
            .contains("no host"));
        // How it is written is fine; whether it resolves is asked per submission.
        assert_eq!(check_endpoint("tcp://no-such-relay.invalid:5571"), Ok(()));
    }

    #[test]
    fn an_unresolvable_host_is_named() {
        assert!(resolve("tcp://127.0.0.1:5571").is_ok());
        assert!(resolve("tcp://localhost:5571").is_ok());
        assert!(resolve("ipc:///run/hark/submit").is_ok());
        // .invalid never resolves (RFC 2606).
        let err = resolve("tcp://no-such-relay.invalid:5571").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot resolve host \"no-such-relay.invalid\""),
            "{err}"
        );
    }
}
