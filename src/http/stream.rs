//! `GET /v1/stream?topic=GLOB`: the relay's live events as Server-Sent Events.
//!
//! One thread SUBscribes to the relay's PUB over inproc (on the relay's ZeroMQ context)
//! and hands every published frame to a broadcast channel; each SSE client filters it by
//! its topic globs. A client that falls behind loses the oldest events and is told how
//! many (an SSE comment `lagged N`); the relay never waits for a browser.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as Shared};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::broadcast;

use super::api::Params;
use super::{Failure, State};
use crate::topic::TopicPattern;

/// The relay's PUB is bound here too (on its own ZeroMQ context).
pub const INPROC_PUBLISH: &str = "inproc://hark-relay-publish";
/// Events buffered per client before the oldest are dropped for it.
const BUFFER: usize = 1024;

/// One published event, as the stream sends it.
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    /// The JSON record (docs/formats.md, "HTTP API").
    pub record: Arc<String>,
}

/// The SUB thread and the channel it feeds.
pub struct Feed {
    pub tx: broadcast::Sender<Published>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feed {
    pub fn start(ctx: &zmq::Context) -> anyhow::Result<Feed> {
        use anyhow::Context as _;
        let sub = ctx.socket(zmq::SUB).context("creating the stream's SUB")?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        sub.connect(INPROC_PUBLISH)
            .context("connecting the stream's SUB")?;
        let (tx, _) = broadcast::channel(BUFFER);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("relay-http-feed".into())
                .spawn(move || feed(sub, tx, stop))
                .context("starting the stream thread")?
        };
        Ok(Feed {
            tx,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn feed(sub: zmq::Socket, tx: broadcast::Sender<Published>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match sub.poll(zmq::POLLIN, 200) {
            Ok(0) | Err(zmq::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("the live stream cannot read the relay: {e}");
                return;
            }
        }
        while let Ok(frames) = sub.recv_multipart(zmq::DONTWAIT) {
            // Nobody listening is the usual case: skip the work.
            if tx.receiver_count() == 0 {
                continue;
            }
            if let Some(p) = published(frames) {
                let _ = tx.send(p);
            }
        }
    }
}

/// A published `[topic, json]` as a stream record; heartbeats and garbage are skipped.
fn published(frames: Vec<Vec<u8>>) -> Option<Published> {
    let topic = String::from_utf8(frames.first()?.clone()).ok()?;
    if topic == crate::bus::heartbeat::TOPIC {
        return None;
    }
    let event = crate::event::Event::from_frames(frames.clone()).ok()?;
    let seq = event.relay.as_ref().map(|r| r.seq);
    let mut record = crate::record::Record::new(frames, None);
    record.received = event
        .relay
        .as_ref()
        .map(|r| r.received.clone())
        .unwrap_or_else(crate::record::now_rfc3339);
    record.signers = crate::history::signature_names(&event);
    record.seq = seq;
    Some(Published {
        topic,
        record: Arc::new(record.to_line()),
    })
}

pub async fn stream(
    Shared(state): Shared<Arc<State>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Sse<impl futures_lite::Stream<Item = Result<SseEvent, Infallible>>>, Failure> {
    let params = Params(params);
    params.only(&["topic"])?;
    let topics = params
        .all("topic")
        .map(|t| {
            TopicPattern::parse(t).map_err(|e| Failure::bad_request(format!("topic={t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(feed) = &state.feed else {
        return Err(Failure::new(
            axum::http::StatusCode::NOT_FOUND,
            "no live stream on this server",
        ));
    };
    let rx = feed.tx.subscribe();
    let stream = futures_lite::stream::unfold((rx, topics), |(mut rx, topics)| async move {
        loop {
            match rx.recv().await {
                Ok(p) => {
                    if !topics.is_empty() && !topics.iter().any(|t| t.matches(&p.topic)) {
                        continue;
                    }
                    let event = SseEvent::default().event("event").data(p.record.as_str());
                    return Some((Ok(event), (rx, topics)));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let event = SseEvent::default().comment(format!("lagged {n}"));
                    return Some((Ok(event), (rx, topics)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
