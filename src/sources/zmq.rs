//! The ZeroMQ source: one SUB socket connected to every relay PUB (and fedmsg endpoint),
//! subscribed to the prefixes its topic patterns allow. The socket lives on the source's
//! own thread, since libzmq sockets are not thread-safe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};
use tracing::error;

use super::{Received, Source};
use crate::bus::subscribe::Subscriber;

/// How often a blocked source looks at its stop flag.
const POLL: Duration = Duration::from_millis(250);

pub struct ZmqSource {
    subscriber: Subscriber,
    endpoints: Vec<String>,
    kind: &'static str,
    metrics: Option<crate::metrics::Registry>,
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
        })
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

    fn run(self: Box<Self>, out: Sender<Received>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
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
