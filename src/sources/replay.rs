//! The replay source: catch-up. Admission reports gaps (seqs of a relay epoch that never
//! arrived, seen from later seqs or heartbeats); this source asks the relays' replay
//! sockets for exactly those seqs and hands what comes back to admission like any other
//! frames, so replayed events pass the same trust policy and dedupe, and run their rules.
//!
//! A gap no relay can fill (older than its journal's retention, or an epoch no configured
//! relay knows any more) is unrecoverable: logged with the seq range, counted in
//! `hark_unrecoverable_events_total`, and remembered for `hark jobs` (see
//! [`Unrecoverable`]). A relay that does not answer is asked again with a backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::{Received, SendTimeoutError, Sender, Source};
use crate::admit::Gap;
use crate::bus::socket::new_socket;
use crate::config::ZmqConfig;
use crate::discovery::{Followed, RelayList, Resolver, Service};
use crate::event::RelayStamp;
use crate::journal::replay::{parse_reply, Cursor, Request, Step};
use crate::metrics::Registry;

/// How long one replay message may take to arrive before the relay counts as unreachable.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Retry backoff for a relay that does not answer: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(30);
/// How often a waiting source looks at its stop flag.
const POLL: Duration = Duration::from_millis(250);

/// Seqs that are gone for good, for the admin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unrecoverable {
    pub relay: String,
    pub epoch: String,
    pub first: u64,
    pub last: u64,
    pub why: String,
}

/// Where unrecoverable gaps are reported: the daemon keeps them for `hark jobs`.
pub type UnrecoverableSink = Arc<Mutex<Vec<Unrecoverable>>>;

pub struct ReplaySource {
    endpoints: Vec<String>,
    /// Replay endpoints from DNS SRV, in their priority order, instead of `endpoints`.
    followed: Option<Followed>,
    gaps: Receiver<Gap>,
    zmq: ZmqConfig,
    metrics: Registry,
    lost: UnrecoverableSink,
}

impl ReplaySource {
    pub fn new(
        endpoints: Vec<String>,
        gaps: Receiver<Gap>,
        zmq: ZmqConfig,
        metrics: Registry,
        lost: UnrecoverableSink,
    ) -> Self {
        ReplaySource {
            endpoints,
            followed: None,
            gaps,
            zmq,
            metrics,
            lost,
        }
    }

    /// A source for a relay list as hark.yaml or the flags give it: fixed endpoints, or the
    /// `_hark-replay._tcp` records of a domain, followed as they change. None for an empty
    /// list (gaps are then only reported).
    pub fn for_relays(
        list: &RelayList,
        nameservers: &[std::net::SocketAddr],
        gaps: Receiver<Gap>,
        zmq: ZmqConfig,
        metrics: Registry,
        lost: UnrecoverableSink,
    ) -> anyhow::Result<Option<Self>> {
        let followed = match list {
            RelayList::Endpoints(eps) if eps.is_empty() => return Ok(None),
            RelayList::Endpoints(_) => None,
            RelayList::Srv(domain) => Some(Followed::start(
                Resolver::new(nameservers)?,
                domain,
                Service::Replay,
            )),
        };
        let mut source = Self::new(list.endpoints().to_vec(), gaps, zmq, metrics, lost);
        source.followed = followed;
        Ok(Some(source))
    }
}

/// One gap still to fill, and when to try next.
struct Wanted {
    gap: Gap,
    /// The first seq still missing (moves on as events arrive).
    from: u64,
    retry: Duration,
    next_try: Instant,
}

enum Fetch {
    /// Everything asked for came back (or the rest was past retention, reported).
    Done,
    /// This relay does not have that epoch; another may.
    NotHere,
    /// No answer in time.
    Unreachable(String),
    Stopped,
}

impl Source for ReplaySource {
    fn name(&self) -> String {
        "source-replay".into()
    }

    fn run(mut self: Box<Self>, out: Sender<Received>, stop: Arc<AtomicBool>) {
        let ctx = zmq::Context::new();
        let mut wanted: VecDeque<Wanted> = VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let wait = wanted
                .front()
                .map(|w| w.next_try.saturating_duration_since(Instant::now()))
                .unwrap_or(POLL)
                .min(POLL);
            match self.gaps.recv_timeout(wait) {
                Ok(gap) => {
                    match gap.since_ms {
                        Some(since) => {
                            info!(relay = %gap.relay, epoch = %gap.epoch, "relay {} is new here: fetching what it received since {} (up to seq {}) from the replay socket(s)", gap.relay, chrono::DateTime::from_timestamp_millis(since).map(|t| t.to_rfc3339()).unwrap_or_default(), gap.before - 1)
                        }
                        None => {
                            info!(relay = %gap.relay, epoch = %gap.epoch, "fetching seq {}..={} from the replay socket(s)", gap.after + 1, gap.before - 1)
                        }
                    }
                    wanted.push_back(Wanted {
                        from: gap.after + 1,
                        gap,
                        retry: RETRY_FIRST,
                        next_try: Instant::now(),
                    });
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if wanted.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => {}
            }
            let Some(mut w) = wanted.pop_front() else {
                continue;
            };
            if w.next_try > Instant::now() {
                wanted.push_front(w);
                continue;
            }
            match self.fill(&ctx, &mut w, &out, &stop) {
                Fetch::Done => {
                    if !finished(&out, &w.gap, &stop) {
                        return;
                    }
                }
                Fetch::Stopped => return,
                Fetch::NotHere => {
                    self.lose(
                        &w,
                        w.gap.before - 1,
                        "no configured relay has this epoch any more (its journal was replaced)",
                    );
                    if !finished(&out, &w.gap, &stop) {
                        return;
                    }
                }
                Fetch::Unreachable(why) => {
                    warn!(relay = %w.gap.relay, "cannot fetch seq {}..={} yet: {why}; trying again in {:?}", w.from, w.gap.before - 1, w.retry);
                    w.next_try = Instant::now() + w.retry;
                    w.retry = (w.retry * 2).min(RETRY_LAST);
                    wanted.push_back(w);
                }
            }
        }
    }
}

impl ReplaySource {
    /// Ask each replay endpoint in turn until one has the gap's epoch.
    fn fill(
        &mut self,
        ctx: &zmq::Context,
        w: &mut Wanted,
        out: &Sender<Received>,
        stop: &AtomicBool,
    ) -> Fetch {
        let endpoints = match &mut self.followed {
            Some(followed) => {
                followed.refresh_if_due();
                followed.tiers().concat()
            }
            None => self.endpoints.clone(),
        };
        let mut unreachable = None;
        for endpoint in &endpoints {
            match self.fetch(ctx, endpoint, w, out, stop) {
                Fetch::NotHere => continue,
                Fetch::Unreachable(why) => unreachable = Some(format!("{endpoint}: {why}")),
                done => return done,
            }
        }
        if unreachable.is_some() {
            if let Some(followed) = &mut self.followed {
                followed.connection_failed();
            }
        }
        match unreachable {
            Some(why) => Fetch::Unreachable(why),
            None => Fetch::NotHere,
        }
    }

    fn fetch(
        &self,
        ctx: &zmq::Context,
        endpoint: &str,
        w: &mut Wanted,
        out: &Sender<Received>,
        stop: &AtomicBool,
    ) -> Fetch {
        let socket = match new_socket(ctx, zmq::DEALER, &self.zmq)
            .and_then(|s| s.set_linger(0).map(|_| s))
            .and_then(|s| s.connect(endpoint).map(|_| s))
        {
            Ok(s) => s,
            Err(e) => return Fetch::Unreachable(e.to_string()),
        };
        let last = w.gap.before - 1;
        let mut cursor = Cursor::new(match w.gap.since_ms {
            // A new relay, nothing fetched yet: from its receive time, not its first seq.
            Some(since) if w.from == w.gap.after + 1 => Request {
                epoch: Some(w.gap.epoch.clone()),
                from_ms: Some(since),
                to_seq: Some(last),
                ..Request::default()
            },
            _ => Request {
                to_seq: Some(last),
                ..Request::after(&w.gap.epoch, w.from - 1)
            },
        });
        if let Err(e) = socket.send(cursor.request(), 0) {
            return Fetch::Unreachable(e.to_string());
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return Fetch::Stopped;
            }
            match socket.poll(zmq::POLLIN, ANSWER_WITHIN.as_millis() as i64) {
                Ok(0) => return Fetch::Unreachable("no answer".into()),
                Ok(_) => {}
                Err(e) => return Fetch::Unreachable(e.to_string()),
            }
            let frames = match socket.recv_multipart(0) {
                Ok(f) => f,
                Err(e) => return Fetch::Unreachable(e.to_string()),
            };
            let step = parse_reply(frames)
                .map_err(|e| e.to_string())
                .and_then(|reply| cursor.on_reply(reply).map_err(|e| e.to_string()));
            match step {
                Ok(Step::Event {
                    seq,
                    received_ms,
                    frames,
                    ..
                }) => {
                    let stamp = RelayStamp {
                        relay: w.gap.relay.clone(),
                        epoch: w.gap.epoch.clone(),
                        seq,
                        received: chrono::DateTime::from_timestamp_millis(received_ms)
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_default(),
                    };
                    self.metrics.inc("hark_replayed_frames_total", &[]);
                    w.from = seq + 1;
                    if !deliver(out, frames, stamp, stop) {
                        return Fetch::Stopped;
                    }
                }
                Ok(Step::Continue) => {
                    if let Err(e) = socket.send(cursor.request(), 0) {
                        return Fetch::Unreachable(e.to_string());
                    }
                }
                Ok(Step::Done { .. }) => return Fetch::Done,
                Ok(Step::Gap {
                    first_available, ..
                }) => {
                    // The oldest part is past retention: report it, then fetch the rest.
                    let gone_to = first_available.saturating_sub(1).min(last);
                    if w.gap.since_ms.is_some() && w.from == w.gap.after + 1 {
                        // How many of its pruned events came after the time asked for
                        // is not known: say so rather than count its whole past as lost.
                        warn!(relay = %w.gap.relay, "relay {}'s journal no longer reaches back to the time asked for; events it received before seq {first_available} are not fetched", w.gap.relay);
                    } else {
                        self.lose(w, gone_to, "older than the relay's journal retention");
                    }
                    if first_available > last {
                        return Fetch::Done;
                    }
                    w.from = first_available;
                    cursor = Cursor::new(Request {
                        to_seq: Some(last),
                        ..Request::after(&w.gap.epoch, w.from - 1)
                    });
                    if let Err(e) = socket.send(cursor.request(), 0) {
                        return Fetch::Unreachable(e.to_string());
                    }
                }
                Ok(Step::UnknownEpoch { .. }) => return Fetch::NotHere,
                Ok(Step::Refused { status, message }) => {
                    return Fetch::Unreachable(format!("{status}: {message}"))
                }
                Err(e) => return Fetch::Unreachable(format!("bad replay answer: {e}")),
            }
        }
    }

    fn lose(&self, w: &Wanted, last: u64, why: &str) {
        if last < w.from {
            return;
        }
        let missing = last - w.from + 1;
        warn!(relay = %w.gap.relay, epoch = %w.gap.epoch, "{missing} event(s) are lost for good: seq {}..={} of relay {} ({why})", w.from, last, w.gap.relay);
        self.metrics.add(
            "hark_unrecoverable_events_total",
            &[("relay", &w.gap.relay)],
            missing as f64,
        );
        if let Ok(mut lost) = self.lost.lock() {
            lost.push(Unrecoverable {
                relay: w.gap.relay.clone(),
                epoch: w.gap.epoch.clone(),
                first: w.from,
                last,
                why: why.to_string(),
            });
        }
    }
}

fn deliver(
    out: &Sender<Received>,
    frames: Vec<Vec<u8>>,
    stamp: RelayStamp,
    stop: &AtomicBool,
) -> bool {
    send(
        out,
        Received {
            frames,
            source: "replay",
            replayed: Some(stamp),
            replay_done: None,
            parsed: None,
        },
        stop,
    )
}

/// Tell admission that the fetch of `gap` is over, whatever came of it.
fn finished(out: &Sender<Received>, gap: &Gap, stop: &AtomicBool) -> bool {
    send(
        out,
        Received {
            frames: Vec::new(),
            source: "replay",
            replayed: None,
            replay_done: Some((gap.relay.clone(), gap.epoch.clone(), gap.before - 1)),
            parsed: None,
        },
        stop,
    )
}

fn send(out: &Sender<Received>, mut item: Received, stop: &AtomicBool) -> bool {
    loop {
        match out.send_timeout(item, POLL) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Relaxed) => item = back,
            Err(_) => return false,
        }
    }
}
