//! Sources: where received messages come from. Each source runs on a thread of its own and
//! hands [`Received`] frames to admission through one channel; it makes no decision about
//! them. Today: [`zmq::ZmqSource`] (SUB to relays and fedmsg endpoints),
//! [`replay::ReplaySource`] (catch-up from the relays' journals) and [`amqp::AmqpSource`]
//! (a queue on an AMQP 0-9-1 broker: RabbitMQ, fedora-messaging). HTTP submission is meant
//! to be one more file here, touching no other stage.

pub mod amqp;
pub mod replay;
pub mod zmq;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::queue::Weigh;
pub use crate::queue::{Receiver, SendTimeoutError, Sender, TrySendError};

/// Frames as one source received them.
#[derive(Debug)]
pub struct Received {
    pub frames: Vec<Vec<u8>>,
    /// The kind of source, for log lines and counters: `relay`, `fedmsg`, `replay`...
    pub source: &'static str,
    /// For frames fetched from a relay's journal: where they stand in its stream (fedmsg
    /// frames carry no stamp of their own).
    pub replayed: Option<crate::event::RelayStamp>,
    /// From the replay source, with no frames: the fetch of this relay epoch's seqs up to
    /// here is over (delivered, or reported lost), so events held behind it may go on.
    pub replay_done: Option<(String, String, u64)>,
    /// An event the source already built (an AMQP delivery, which is not a bus envelope),
    /// with its [`crate::event::Ack`]; `frames` is empty then.
    pub parsed: Option<Box<crate::event::Event>>,
}

impl Received {
    /// Frames as a source received them live.
    pub fn live(frames: Vec<Vec<u8>>, source: &'static str) -> Self {
        Received {
            frames,
            source,
            replayed: None,
            replay_done: None,
            parsed: None,
        }
    }

    /// An event built by the source itself (AMQP).
    pub fn parsed(event: crate::event::Event, source: &'static str) -> Self {
        Received {
            parsed: Some(Box::new(event)),
            ..Received::live(Vec::new(), source)
        }
    }
}

impl Weigh for Received {
    fn weight(&self) -> usize {
        self.frames.iter().map(Vec::len).sum::<usize>()
            + self.parsed.as_ref().map_or(0, |e| e.weight())
    }
}

/// A component that produces messages. `run` returns when `stop` is set or the receiving
/// side of `out` is gone; it retries transient errors itself.
pub trait Source: Send + 'static {
    /// A short name for the thread and for log lines.
    fn name(&self) -> String;
    fn run(self: Box<Self>, out: Sender<Received>, stop: Arc<AtomicBool>);
}

/// Running sources and the one channel they all feed.
pub struct Sources {
    pub rx: Receiver<Received>,
    /// Keeps the channel open while no source runs (none configured, or all ended), so a
    /// consumer waits rather than taking an empty channel for the end of the daemon.
    tx: Sender<Received>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Sources {
    /// Start every source on its own thread. `capacity` messages and `bytes` bound the
    /// channel, so a slow consumer pushes back on the sources (libzmq then queues up to
    /// its HWM, a broker up to its prefetch).
    pub fn start(
        sources: Vec<Box<dyn Source>>,
        capacity: usize,
        bytes: usize,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = crate::queue::bounded(capacity, bytes);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for source in sources {
            let (tx, stop) = (tx.clone(), stop.clone());
            let name = source.name();
            threads.push(
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || source.run(tx, stop))
                    .with_context(|| format!("starting source {name}"))?,
            );
        }
        Ok(Sources {
            rx,
            tx,
            threads,
            stop,
        })
    }

    /// Stop every source and wait for its thread.
    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.rx);
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
