//! The results publisher: `_hark.job.*` notices, signed, to one relay over one long-lived
//! DEALER socket, from a thread of its own so that a slow or absent relay never stalls
//! scheduling. The queue is bounded: while the relay is down the oldest notices are
//! dropped (and counted in `hark_results_dropped_total`), so memory stays flat and the
//! newest state of the world gets through first once it is back.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{error, info, warn};

use crate::bus::ack::{Ack, AckStatus};
use crate::bus::socket::new_socket;
use crate::config::ZmqConfig;
use crate::event::canonical;
use crate::event::keys::SigningKey;
use crate::jobs::report::Notice;
use crate::metrics::Registry;

/// Notices kept while the relay does not answer.
pub const QUEUE_CAPACITY: usize = 1000;
/// How long one notice waits for its ack before the relay counts as down for now.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const RESEND_EVERY: Duration = Duration::from_secs(1);

struct Queue {
    notices: VecDeque<Notice>,
    closed: bool,
    /// Dropped since the last successful publish (for one log line per outage).
    dropped: u64,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Results {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    capacity: usize,
    metrics: Registry,
}

impl Results {
    fn new(capacity: usize, metrics: Registry) -> Self {
        Results {
            shared: Arc::new((
                Mutex::new(Queue {
                    notices: VecDeque::new(),
                    closed: false,
                    dropped: 0,
                }),
                Condvar::new(),
            )),
            capacity: capacity.max(1),
            metrics,
        }
    }

    /// Queue a notice; never blocks. When full, the oldest queued notice is dropped.
    pub fn push(&self, notice: Notice) {
        let (lock, cv) = &*self.shared;
        let Ok(mut q) = lock.lock() else { return };
        if q.notices.len() >= self.capacity {
            if let Some(old) = q.notices.pop_front() {
                q.dropped += 1;
                self.metrics.inc("hark_results_dropped_total", &[]);
                if q.dropped == 1 {
                    warn!(job = old.job, "results relay not answering: {} notices queued; dropping the oldest until it is back", self.capacity);
                }
            }
        }
        q.notices.push_back(notice);
        cv.notify_one();
    }

    /// No more notices; the thread exits once it has tried the queued ones.
    pub fn close(&self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut q) = lock.lock() {
            q.closed = true;
        }
        cv.notify_all();
    }

    /// The oldest notice, waiting for one; `None` once closed and empty.
    fn front(&self) -> Option<Notice> {
        let (lock, cv) = &*self.shared;
        let mut q = lock.lock().ok()?;
        loop {
            if let Some(n) = q.notices.front() {
                return Some(n.clone());
            }
            if q.closed {
                return None;
            }
            q = cv.wait(q).ok()?;
        }
    }

    /// Remove the notice just handled, unless it was dropped meanwhile.
    fn pop(&self, job: i64, kind: &str) {
        let (lock, _) = &*self.shared;
        if let Ok(mut q) = lock.lock() {
            if q.notices
                .front()
                .is_some_and(|n| n.job == job && n.kind == kind)
            {
                q.notices.pop_front();
            }
        }
    }

    fn closed(&self) -> bool {
        self.shared.0.lock().map(|q| q.closed).unwrap_or(true)
    }

    /// After an ack: how many were dropped during the outage (and reset the count).
    fn take_dropped(&self) -> u64 {
        self.shared
            .0
            .lock()
            .map(|mut q| std::mem::take(&mut q.dropped))
            .unwrap_or(0)
    }
}

/// A notice as a fedora-messaging message on the AMQP results exchange
/// (`amqp.results_exchange`): routing key `_hark.job.KIND`, body the notice, the id fresh.
pub fn push_amqp(out: &crate::bus::amqp_out::AmqpOut, notice: &Notice) {
    let body = match serde_json::to_value(notice) {
        Ok(body) => body,
        Err(e) => {
            error!(job = notice.job, "cannot encode a notice for AMQP: {e}");
            return;
        }
    };
    let mut headers = serde_json::Map::new();
    headers.insert("hark-rule".into(), Value::String(notice.rule.clone()));
    out.push(crate::bus::amqp_out::Outgoing {
        routing_key: format!("_hark.job.{}", notice.kind),
        message_id: uuid::Uuid::new_v4().to_string(),
        body,
        headers,
        sent_at: None,
    });
}

/// Start the publisher thread for `endpoint` (a relay's submit socket).
pub fn spawn(
    endpoint: String,
    key: SigningKey,
    zmq: ZmqConfig,
    metrics: Registry,
) -> anyhow::Result<(Results, std::thread::JoinHandle<()>)> {
    let results = Results::new(QUEUE_CAPACITY, metrics);
    let ctx = zmq::Context::new();
    let socket = new_socket(&ctx, zmq::DEALER, &zmq)?;
    // Unsent notices are not worth holding the daemon's exit for.
    socket.set_linger(0)?;
    socket.connect(&endpoint)?;
    let queue = results.clone();
    let handle = std::thread::Builder::new()
        .name("results".into())
        .spawn(move || publish_loop(&ctx, &socket, &endpoint, &key, &queue))?;
    Ok((results, handle))
}

enum Sent {
    Acked,
    Refused(String),
    NoAnswer,
    Failed(String),
}

fn publish_loop(
    _ctx: &zmq::Context,
    socket: &zmq::Socket,
    endpoint: &str,
    key: &SigningKey,
    queue: &Results,
) {
    let origin = crate::bus::relay::hostname();
    // The event being delivered, kept across resends so its uuid stays the same and the
    // relay's dedupe absorbs a resend after a lost ack.
    let mut current: Option<(i64, &'static str, Value)> = None;
    // One warning per outage, not one per attempt.
    let mut down = false;
    while let Some(notice) = queue.front() {
        let topic = format!("_hark.job.{}", notice.kind);
        let same = current
            .as_ref()
            .is_some_and(|(job, kind, _)| *job == notice.job && *kind == notice.kind);
        if !same {
            let data = match serde_json::to_value(&notice) {
                Ok(data) => data,
                Err(e) => {
                    // Never `null` on the bus: a consumer would take it for a real notice.
                    error!(
                        job = notice.job,
                        "cannot encode the {topic} notice: {e}; not published"
                    );
                    queue.pop(notice.job, notice.kind);
                    continue;
                }
            };
            match crate::bus::publish::build_event(&topic, data, key, Some(&origin), None) {
                Ok(ev) => current = Some((notice.job, notice.kind, ev)),
                Err(e) => {
                    error!(job = notice.job, "cannot sign {topic}: {e}");
                    queue.pop(notice.job, notice.kind);
                    continue;
                }
            }
        }
        let Some((_, _, event)) = current.as_ref() else {
            continue;
        };
        match send_once(socket, event) {
            Sent::Acked => {
                queue.pop(notice.job, notice.kind);
                current = None;
                down = false;
                let dropped = queue.take_dropped();
                if dropped > 0 {
                    info!("results relay {endpoint} answers again; {dropped} notice(s) were dropped meanwhile");
                }
            }
            Sent::Refused(why) => {
                warn!(job = notice.job, "relay {endpoint} refused {topic}: {why}");
                queue.pop(notice.job, notice.kind);
                current = None;
            }
            Sent::NoAnswer if queue.closed() => return,
            Sent::NoAnswer => {
                // Kept at the head: libzmq reconnects by itself and the next round resends.
                if !down {
                    down = true;
                    warn!(job = notice.job, "no ack from results relay {endpoint} within {ACK_TIMEOUT:?} for {topic}; retrying until it answers");
                }
            }
            Sent::Failed(e) => {
                warn!(
                    job = notice.job,
                    "cannot publish {topic} to {endpoint}: {e}"
                );
                std::thread::sleep(RESEND_EVERY);
                if queue.closed() {
                    return;
                }
            }
        }
    }
}

/// Send `event` (with resends) and wait for its ack, up to [`ACK_TIMEOUT`].
fn send_once(socket: &zmq::Socket, event: &Value) -> Sent {
    let uuid = event
        .get("uuid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let body = canonical::to_vec(event).unwrap_or_else(|_| event.to_string().into_bytes());
    let started = Instant::now();
    let mut last_send: Option<Instant> = None;
    loop {
        if last_send.is_none_or(|t| t.elapsed() >= RESEND_EVERY) {
            match socket.send(body.as_slice(), zmq::DONTWAIT) {
                Ok(()) | Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Sent::Failed(e.to_string()),
            }
            last_send = Some(Instant::now());
        }
        let remaining = ACK_TIMEOUT.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Sent::NoAnswer;
        }
        let wait = remaining.min(RESEND_EVERY);
        match socket.poll(zmq::POLLIN, i64::try_from(wait.as_millis()).unwrap_or(1000)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => return Sent::Failed(e.to_string()),
        }
        let frame = match socket.recv_bytes(0) {
            Ok(f) => f,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let Ok(ack) = serde_json::from_slice::<Ack>(&frame) else {
            continue;
        };
        // A late ack for an earlier notice's resend.
        if ack.uuid.as_deref().is_some_and(|u| u != uuid) {
            continue;
        }
        return match ack.status {
            AckStatus::Accepted | AckStatus::Duplicate => Sent::Acked,
            AckStatus::Refused => Sent::Refused(format!(
                "{}: {}",
                ack.reason.unwrap_or_default(),
                ack.message.unwrap_or_default()
            )),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(job: i64) -> Notice {
        Notice {
            kind: "succeeded",
            job,
            rule: "r".into(),
            key: String::new(),
            attempt: 1,
            state: "succeeded".into(),
            exit_code: Some(0),
            duration_seconds: Some(0.1),
            events: vec![],
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let metrics = Registry::default();
        let q = Results::new(2, metrics.clone());
        for job in 1..=4 {
            q.push(notice(job));
        }
        assert_eq!(metrics.get("hark_results_dropped_total", &[]), 2.0);
        assert_eq!(q.front().map(|n| n.job), Some(3));
        q.pop(3, "succeeded");
        assert_eq!(q.front().map(|n| n.job), Some(4));
        q.pop(4, "succeeded");
        q.close();
        assert!(q.front().is_none(), "closed and empty ends the thread");
        assert_eq!(q.take_dropped(), 2);
    }
}
