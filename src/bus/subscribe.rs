//! The receiving side: one SUB socket connected to every configured relay (or fedmsg
//! endpoint), with prefix subscriptions derived from topic patterns so that libzmq filters
//! at the publisher. Callers still match the full pattern and dedupe by uuid, since the
//! same event arrives once per relay.

use std::time::Duration;

use super::socket::{connect_all, new_socket};
use crate::config::ZmqConfig;
use crate::topic::TopicPattern;

/// Largest message a subscriber accepts (64 MiB), far above any real event.
const MAX_MESSAGE: i64 = 64 * 1024 * 1024;

pub struct Subscriber {
    socket: zmq::Socket,
    _ctx: zmq::Context,
}

impl Subscriber {
    /// Connect to `endpoints`, subscribing to what `patterns` can match (everything if empty).
    pub fn connect(
        endpoints: &[String],
        patterns: &[TopicPattern],
        zmq_cfg: &ZmqConfig,
    ) -> anyhow::Result<Self> {
        let ctx = zmq::Context::new();
        let socket = new_socket(&ctx, zmq::SUB, zmq_cfg)?;
        // Relays enforce their own limit; this guards against a misbehaving direct (fedmsg)
        // publisher: libzmq drops the connection rather than buffering a giant message.
        socket.set_maxmsgsize(MAX_MESSAGE)?;
        let mut prefixes: Vec<String> = patterns.iter().map(TopicPattern::literal_prefix).collect();
        if prefixes.is_empty() || prefixes.iter().any(String::is_empty) {
            prefixes = vec![String::new()];
        }
        // Heartbeats always: they are how a subscriber notices what it missed.
        prefixes.push(super::heartbeat::TOPIC.to_string());
        prefixes.sort();
        prefixes.dedup();
        for p in &prefixes {
            socket.set_subscribe(p.as_bytes())?;
        }
        connect_all(&socket, endpoints, "subscriber")?;
        Ok(Subscriber { socket, _ctx: ctx })
    }

    /// The next message's frames, or None after `timeout`.
    pub fn recv(&self, timeout: Duration) -> zmq::Result<Option<Vec<Vec<u8>>>> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        match self.socket.poll(zmq::POLLIN, ms) {
            Ok(0) => Ok(None),
            Ok(_) => self.socket.recv_multipart(0).map(Some),
            Err(zmq::Error::EINTR) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
