//! The receiving side: one SUB socket connected to every configured relay (or fedmsg
//! endpoint), with prefix subscriptions derived from topic patterns so that libzmq filters
//! at the publisher. Callers still match the full pattern and dedupe by uuid, since the
//! same event arrives once per relay.
//!
//! It also watches its own connections: libzmq drops a connection whose peer sends a
//! message over the size limit and then never reconnects it (checked with libzmq 4.3.5),
//! so a subscriber would go deaf to that endpoint in silence. Every dropped connection is
//! therefore made again here, and reported. Endpoints can be added and removed while it
//! runs (relays found through DNS come and go); one removed is not made again.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use tracing::warn;

use super::socket::{connect_all, monitor_event, new_socket};
use crate::config::ZmqConfig;
use crate::topic::TopicPattern;

/// Largest message a subscriber accepts (64 MiB), far above any real event.
const MAX_MESSAGE: i64 = 64 * 1024 * 1024;

/// Where the socket reports its connection events (one context per subscriber, so the
/// name cannot collide).
const MONITOR: &str = "inproc://hark-subscriber-monitor";

pub struct Subscriber {
    socket: zmq::Socket,
    monitor: zmq::Socket,
    /// What the socket is connected to now.
    endpoints: RefCell<Vec<String>>,
    /// Endpoints whose connection dropped and was made again since the last
    /// [`Subscriber::take_reconnected`].
    reconnected: RefCell<Vec<String>>,
    /// Whether a connection dropped since the last [`Subscriber::take_failed`].
    failed: Cell<bool>,
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
        // Before connecting: libzmq drops events nobody is there to read.
        socket.monitor(MONITOR, (zmq::SocketEvent::DISCONNECTED as u16).into())?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect(MONITOR)?;
        connect_all(&socket, endpoints, "subscriber")?;
        Ok(Subscriber {
            socket,
            monitor,
            endpoints: RefCell::new(endpoints.to_vec()),
            reconnected: RefCell::default(),
            failed: Cell::default(),
            _ctx: ctx,
        })
    }

    /// Connect to one more endpoint.
    pub fn add(&self, endpoint: &str) -> zmq::Result<()> {
        self.socket.connect(endpoint)?;
        self.endpoints.borrow_mut().push(endpoint.to_string());
        Ok(())
    }

    /// Stop listening to an endpoint (events already queued from it are still read).
    pub fn remove(&self, endpoint: &str) {
        self.endpoints.borrow_mut().retain(|e| e != endpoint);
        // Not connected any more (libzmq dropped it) is as good as disconnected.
        let _ = self.socket.disconnect(endpoint);
    }

    /// The next message's frames, or None after `timeout` (or after a dropped connection
    /// was made again).
    pub fn recv(&self, timeout: Duration) -> zmq::Result<Option<Vec<Vec<u8>>>> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut items = [
            self.socket.as_poll_item(zmq::POLLIN),
            self.monitor.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, ms) {
            Ok(0) => Ok(None),
            Ok(_) if items[0].is_readable() => self.socket.recv_multipart(0).map(Some),
            Ok(_) => {
                self.reconnect()?;
                Ok(None)
            }
            Err(zmq::Error::EINTR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Endpoints reconnected since the last call, for the caller's counters.
    pub fn take_reconnected(&self) -> Vec<String> {
        self.reconnected.take()
    }

    /// Whether a connection dropped since the last call: where relays come from DNS, a
    /// sign to look them up again.
    pub fn take_failed(&self) -> bool {
        self.failed.take()
    }

    /// Make the dropped connection the monitor reported again. A peer that merely
    /// restarted would also be reconnected by libzmq; doing it here in every case keeps
    /// one path, and connect retries with the configured backoff while nothing listens.
    fn reconnect(&self) -> zmq::Result<()> {
        let frames = self.monitor.recv_multipart(zmq::DONTWAIT)?;
        if monitor_event(&frames) != Some(zmq::SocketEvent::DISCONNECTED as u16) {
            return Ok(());
        }
        let Some(endpoint) = frames.get(1).and_then(|f| std::str::from_utf8(f).ok()) else {
            return Ok(());
        };
        let endpoint = endpoint.to_string();
        self.failed.set(true);
        if !self.endpoints.borrow().contains(&endpoint) {
            // Removed on purpose: the drop is the removal itself.
            return Ok(());
        }
        warn!(
            %endpoint,
            "subscriber: the connection dropped (the peer went away, or sent a message over \
             the {} MiB limit); connecting again",
            MAX_MESSAGE / (1024 * 1024)
        );
        // The endpoint may already be gone from the socket's list; connecting is what counts.
        let _ = self.socket.disconnect(&endpoint);
        self.socket.connect(&endpoint)?;
        self.reconnected.borrow_mut().push(endpoint);
        Ok(())
    }
}
