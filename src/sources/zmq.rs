//! The ZeroMQ source: one SUB socket connected to every relay PUB (and fedmsg endpoint),
//! subscribed to the prefixes its topic patterns allow. The socket lives on the source's
//! own thread, since libzmq sockets are not thread-safe. Relays found through DNS SRV are
//! followed here: the socket connects to relays that appear and leaves those that go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use super::{Received, SendTimeoutError, Sender, Source};
use crate::bus::subscribe::Subscriber;
use crate::discovery::{Followed, RelayList, Resolver, Service};

/// How often a blocked source looks at its stop flag.
const POLL: Duration = Duration::from_millis(250);

pub struct ZmqSource {
    subscriber: Subscriber,
    endpoints: Vec<String>,
    kind: &'static str,
    metrics: Option<crate::metrics::Registry>,
    followed: Option<Followed>,
}

impl ZmqSource {
    /// Connects at once (libzmq reconnects by itself), so a bad endpoint fails the caller.
    pub fn connect(
        endpoints: &[String],
        patterns: &[crate::topic::TopicPattern],
        zmq: &crate::config::ZmqConfig,
        kind: &'static str,
    ) -> anyhow::Result<Self> {
        Ok(ZmqSource {
            subscriber: Subscriber::connect(endpoints, patterns, zmq)?,
            endpoints: endpoints.to_vec(),
            kind,
            metrics: None,
            followed: None,
        })
    }

    /// Subscribe to the relays `followed` names, now and as they change.
    pub fn follow(
        followed: Followed,
        patterns: &[crate::topic::TopicPattern],
        zmq: &crate::config::ZmqConfig,
        kind: &'static str,
    ) -> anyhow::Result<Self> {
        let mut source = Self::connect(&followed.endpoints(), patterns, zmq, kind)?;
        source.endpoints = vec![followed.name()];
        source.followed = Some(followed);
        Ok(source)
    }

    /// A source for a relay list as hark.yaml or the flags give it; None for an empty list.
    pub fn for_relays(
        list: &RelayList,
        patterns: &[crate::topic::TopicPattern],
        zmq: &crate::config::ZmqConfig,
        nameservers: &[std::net::SocketAddr],
    ) -> anyhow::Result<Option<Self>> {
        Ok(match list {
            RelayList::Srv(domain) => Some(Self::follow(
                Followed::start(Resolver::new(nameservers)?, domain, Service::Publish),
                patterns,
                zmq,
                "relay",
            )?),
            RelayList::Endpoints(eps) if eps.is_empty() => None,
            RelayList::Endpoints(eps) => Some(Self::connect(eps, patterns, zmq, "relay")?),
        })
    }

    /// Apply what DNS says now: connect to new relays, leave the ones that went.
    fn follow_changes(&mut self) {
        let Some(followed) = &mut self.followed else {
            return;
        };
        if self.subscriber.take_failed() {
            followed.connection_failed();
        }
        let Some(change) = followed.refresh_if_due() else {
            return;
        };
        for endpoint in &change.removed {
            self.subscriber.remove(endpoint);
        }
        for endpoint in &change.added {
            if let Err(e) = self.subscriber.add(endpoint) {
                error!(%endpoint, "subscriber: cannot connect to a relay DNS named: {e}");
            }
        }
    }

    /// Count reconnections in `metrics` (`hark_source_reconnects_total{endpoint}`).
    pub fn with_metrics(mut self, metrics: crate::metrics::Registry) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl Source for ZmqSource {
    fn name(&self) -> String {
        format!("source-{}", self.kind)
    }

    fn run(mut self: Box<Self>, out: Sender<Received>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.follow_changes();
            let received = self.subscriber.recv(POLL);
            if let Some(metrics) = &self.metrics {
                for endpoint in self.subscriber.take_reconnected() {
                    metrics.inc("hark_source_reconnects_total", &[("endpoint", &endpoint)]);
                }
            }
            let frames = match received {
                Ok(Some(frames)) => frames,
                Ok(None) => continue,
                Err(e) => {
                    error!(endpoints = %self.endpoints.join(" "), "subscriber: {e}");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let mut item = Received::live(frames, self.kind);
            // Back-pressure: wait for room, but keep honouring the stop flag.
            loop {
                match out.send_timeout(item, POLL) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Relaxed) => {
                        item = back
                    }
                    Err(_) => return,
                }
            }
        }
    }
}
