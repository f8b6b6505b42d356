//! Admission: the one stage every received message passes before anything acts on it.
//! The relay, the trigger daemon, `hark tail` and `hark record` all use it.
//!
//! In order: size and frame checks → envelope (Laniakea 1.0 or fedmsg) → the trust policy
//! for that format (signatures, grants, unsigned, freshness; fedmsg only where allowed) →
//! uuid dedupe → relay sequence numbers and gaps. Trust runs before dedupe, so a forged or
//! stale event can never burn a real event's uuid.
//!
//! The checks split by what they need: [`Gate`] is stateless and cheap to clone, so the
//! relay runs it on its verification workers; [`Admission`] adds the state (dedupe window,
//! sequences, the rate-limited refusal log, counters) for one thread that owns it.

pub mod dedupe;
pub mod fedmsg;
pub mod health;
pub mod refusal;
pub mod sequence;
pub mod trust;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

pub use dedupe::Dedupe;
pub use refusal::{Refusal, RefusalLog};
pub use sequence::{Gap, NewRelays, Sequences};
pub use trust::{load_keyring, parse_event_time, parse_grant, TrustPolicy};

use crate::bus::heartbeat::Heartbeat;
use crate::event::sign::{self, SignatureReport};
use crate::event::{EnvelopeError, Event, Format, Frame};
use crate::metrics::Registry;
use crate::sources::Received;

/// A refusal with the uuid, when the envelope got far enough to have one.
#[derive(Debug, Clone)]
pub struct Refused {
    pub uuid: Option<String>,
    pub refusal: Refusal,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused {
            uuid: None,
            refusal,
        }
    }
}

impl From<EnvelopeError> for Refused {
    fn from(e: EnvelopeError) -> Self {
        Refusal::Envelope(e).into()
    }
}

/// The stateless checks: size, envelope, and the trust policy by format.
#[derive(Debug, Clone)]
pub struct Gate {
    policy: TrustPolicy,
    allow_fedmsg: bool,
    max_message_size: usize,
}

impl Gate {
    pub fn new(policy: TrustPolicy, allow_fedmsg: bool, max_message_size: usize) -> Self {
        Gate {
            policy,
            allow_fedmsg,
            max_message_size,
        }
    }

    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    fn fits(&self, size: usize) -> Result<(), Refusal> {
        if size > self.max_message_size {
            return Err(Refusal::Oversized {
                size,
                limit: self.max_message_size,
            });
        }
        Ok(())
    }

    /// The one frame of a relay submission, checked for count and size (cheap; the socket
    /// thread runs it before handing the frame to a worker).
    pub fn submission_frame(&self, mut frames: Vec<Vec<u8>>) -> Result<Vec<u8>, Refusal> {
        match frames.pop() {
            Some(frame) if frames.is_empty() => {
                self.fits(frame.len())?;
                Ok(frame)
            }
            _ => Err(Refusal::Envelope(EnvelopeError::FrameCount {
                expected: "1 (one JSON frame per submission)",
                got: frames.len() + 1,
            })),
        }
    }

    /// A submission: a native event only (fedmsg publishers reach a relay by PUB).
    pub fn check_submission(&self, frame: Vec<u8>, now: DateTime<Utc>) -> Result<Event, Refused> {
        let mut event = Event::from_submission(frame)?;
        self.trust(&mut event, now)?;
        Ok(event)
    }

    /// Several submissions at once, in order: each parsed, then every Ed25519 signature of
    /// them verified in one batch ([`sign::verify_batch`]), then the rest of the policy per
    /// event. An admitted event comes with its claims, whose signed bytes a countersignature
    /// can reuse.
    pub fn check_submissions(
        &self,
        batch: Vec<(Vec<u8>, DateTime<Utc>)>,
    ) -> Vec<Result<(Event, sign::Claims), Refused>> {
        type Parsed = Result<(Event, sign::Claims, DateTime<Utc>), Refused>;
        let mut parsed: Vec<Parsed> = batch
            .into_iter()
            .map(|(frame, now)| {
                let event = Event::from_submission(frame)?;
                let claims = match event.format {
                    Format::Laniakea => self.policy.claims(&event),
                    _ => sign::Claims::default(),
                };
                Ok((event, claims, now))
            })
            .collect();
        let mut claims: Vec<sign::Claims> = parsed
            .iter_mut()
            .filter_map(|r| r.as_mut().ok())
            .map(|(_, c, _)| std::mem::take(c))
            .collect();
        sign::verify_batch(&mut claims);
        let mut claims = claims.into_iter();
        parsed
            .into_iter()
            .map(|r| {
                let (mut event, _, now) = r?;
                let mut c = claims.next().unwrap_or_default();
                let report = std::mem::take(&mut c.report);
                self.trust_checked(&mut event, report, now)?;
                Ok((event, c))
            })
            .collect()
    }

    /// Frames from a PUB socket (a relay, or a fedmsg endpoint), or from a relay's journal
    /// (`from_journal`).
    pub fn check_frames(
        &self,
        frames: Vec<Vec<u8>>,
        now: DateTime<Utc>,
        from_journal: bool,
    ) -> Result<Event, Refused> {
        self.fits(frames.iter().map(Vec::len).sum())?;
        let mut event = Event::from_frames(frames)?;
        let at = if from_journal {
            taken_in_at(&event, now)
        } else {
            now
        };
        self.trust(&mut event, at)?;
        Ok(event)
    }

    /// fedmsg pass-through on a relay: envelope checks without building an event, and the
    /// msg_id for dedupe. The frames are forwarded untouched.
    pub fn check_fedmsg_passthrough<'f, F: Frame>(
        &self,
        frames: &'f [F],
    ) -> Result<std::borrow::Cow<'f, str>, Refused> {
        self.fits(frames.iter().map(|f| f.len()).sum())?;
        Ok(fedmsg::fedmsg_id(frames)?)
    }

    fn trust(&self, event: &mut Event, now: DateTime<Utc>) -> Result<(), Refused> {
        let report = match event.format {
            Format::Laniakea => {
                let mut claims = self.policy.claims(event);
                claims.verify_each();
                claims.report
            }
            _ => SignatureReport::default(),
        };
        self.trust_checked(event, report, now)
    }

    /// [`Gate::trust`] with the Ed25519 signatures already checked into `report`.
    fn trust_checked(
        &self,
        event: &mut Event,
        report: SignatureReport,
        now: DateTime<Utc>,
    ) -> Result<(), Refused> {
        let refusal = match event.format {
            Format::Laniakea => self.policy.admit_checked(event, report, now).err(),
            Format::Fedmsg if !self.allow_fedmsg => Some(Refusal::FedmsgNotAllowed),
            Format::Fedmsg => None,
            // Only the AMQP source builds these (as parsed events, never from frames): the
            // shape arriving on a bus socket would be a forged `source`.
            Format::Amqp => Some(Refusal::Envelope(EnvelopeError::UnknownEnvelope)),
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => Err(Refused {
                uuid: Some(event.uuid.clone()),
                refusal,
            }),
        }
    }
}

/// When the relay took a journaled event in, by its stamp; `now` if that is unknown or
/// later. A subscriber that was down for longer than `trust.max_age` must still run what
/// it missed, so a fetched event's age is judged when the relay admitted it, not when the
/// subscriber came back: the relay checked it against the same window then.
fn taken_in_at(event: &Event, now: DateTime<Utc>) -> DateTime<Utc> {
    event
        .relay
        .as_ref()
        .and_then(|stamp| parse_event_time(&stamp.received))
        .filter(|at| *at <= now)
        .unwrap_or(now)
}

/// Metric names, so the relay and the subscribers keep the counters they always had.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub refused: &'static str,
}

impl Counters {
    pub const RELAY: Counters = Counters {
        refused: "hark_relay_refused_total",
    };
    pub const SUBSCRIBER: Counters = Counters {
        refused: "hark_events_refused_total",
    };
}

/// Counts refusals by reason and logs them without letting a flood flood the log.
pub struct Refusals {
    log: RefusalLog,
    metrics: Registry,
    counters: Counters,
}

impl Refusals {
    pub fn new(metrics: Registry, counters: Counters) -> Self {
        Refusals {
            log: RefusalLog::new(),
            metrics,
            counters,
        }
    }

    pub fn refuse(&mut self, source: &str, uuid: Option<&str>, refusal: &Refusal) {
        self.metrics
            .inc(self.counters.refused, &[("reason", refusal.reason())]);
        self.log.refused(source, uuid, refusal);
    }

    /// Flush the summary of suppressed refusals once their window is over.
    pub fn roll(&mut self) {
        self.log.roll();
    }
}

/// How a subscriber treats signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse what the trust policy refuses (the trigger daemon).
    Enforce,
    /// Show everything with what its signatures say (`hark tail`, `hark record`: the tools
    /// an admin reaches for when something does not arrive). Malformed envelopes are still
    /// refused.
    Observe,
}

/// What admission lets through.
pub struct Admitted {
    pub event: Event,
    /// What every signature says, against the trusted keyring (Observe mode only).
    pub report: Option<SignatureReport>,
}

/// Live events of a relay epoch held back while the seqs before them are fetched, so
/// that events run in publish order and the seq a daemon persists never passes a hole.
struct Held {
    /// Release once the fetch of the seqs up to here is over.
    through: u64,
    since: Instant,
    events: Vec<Admitted>,
}

/// How long, and how many, live events wait behind a fetch that does not finish (a relay
/// whose replay socket is unreachable): then they go on, out of order, with a warning.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);
const HOLD_EVENTS_AT_MOST: usize = 100_000;

/// The subscriber side of admission, owned by one thread.
pub struct Admission {
    gate: Gate,
    mode: Mode,
    dedupe: Dedupe,
    sequences: Sequences,
    refusals: Refusals,
    metrics: Registry,
    gaps: Vec<Gap>,
    replaying: bool,
    held: HashMap<(String, String), Held>,
    /// Per relay: when its last heartbeat came, how often they come, and whether it was
    /// reported silent.
    beats: HashMap<String, (Instant, Duration, bool)>,
    /// hark relays this subscriber connects to, which send heartbeats; until one has, it
    /// cannot say it is connected to anything.
    expected: Vec<String>,
    started: Instant,
    warned_unheard: bool,
    /// What each source was last heard from, for `hark status`.
    health: health::Health,
}

/// A relay is reported silent after this many heartbeat intervals without one.
const SILENT_AFTER_BEATS: u32 = 3;
/// Until a first heartbeat, relays are reported unheard after this long: three of the
/// default intervals.
const UNHEARD_AFTER: Duration = Duration::from_secs(15);

impl Admission {
    pub fn new(
        gate: Gate,
        mode: Mode,
        dedupe: Dedupe,
        sequences: Sequences,
        metrics: Registry,
    ) -> Self {
        Admission {
            gate,
            mode,
            dedupe,
            sequences,
            refusals: Refusals::new(metrics.clone(), Counters::SUBSCRIBER),
            metrics,
            gaps: Vec::new(),
            replaying: false,
            held: HashMap::new(),
            beats: HashMap::new(),
            expected: Vec::new(),
            started: Instant::now(),
            warned_unheard: false,
            health: health::Health::default(),
        }
    }

    /// The snapshots of what each source was last heard from, handed over by `tick`.
    pub fn health(&self) -> health::Shared {
        self.health.shared()
    }

    /// The hark relays connected to (not fedmsg endpoints): if none sends a heartbeat in
    /// the first seconds, say so, instead of looking connected.
    pub fn expecting_relays(mut self, endpoints: &[String]) -> Self {
        self.expected = endpoints.to_vec();
        self
    }

    /// Gaps will be fetched again (a replay source runs): their detection is not news.
    pub fn with_replay(mut self) -> Self {
        self.replaying = true;
        self
    }

    /// Admit what a source received into `out` (with any events it releases), or count
    /// and log why not. With replay, live events behind a gap wait until it is fetched.
    pub fn admit_into(&mut self, received: Received, out: &mut Vec<Admitted>) {
        if let Some((relay, epoch, through)) = &received.replay_done {
            self.release(relay, epoch, Some(*through), out);
            return;
        }
        self.release_overdue(out);
        let replayed = received.replayed.is_some();
        let kind = received.source;
        let Some(admitted) = self.admit_one(received) else {
            return;
        };
        if !replayed {
            let event = &admitted.event;
            match (&event.relay, &event.source) {
                (Some(stamp), _) => self.health.event(&stamp.relay, "relay"),
                (None, Some(broker)) => self.health.event(broker, "amqp"),
                (None, None) => self.health.event(kind, kind),
            }
        }
        let key = admitted
            .event
            .relay
            .as_ref()
            .map(|s| (s.relay.clone(), s.epoch.clone(), s.seq));
        match key {
            Some((relay, epoch, seq)) if !replayed => {
                let k = (relay, epoch);
                match self.held.get_mut(&k) {
                    Some(h) if seq > h.through => h.events.push(admitted),
                    _ => out.push(admitted),
                }
                if self
                    .held
                    .get(&k)
                    .is_some_and(|h| h.events.len() >= HOLD_EVENTS_AT_MOST)
                {
                    warn!(relay = %k.0, "{HOLD_EVENTS_AT_MOST} newer events are waiting for missed ones; processing them now, out of order");
                    self.release(&k.0, &k.1, None, out);
                }
            }
            _ => out.push(admitted),
        }
    }

    /// Events held for `relay`/`epoch`, once the fetch through `through` is over (`None`:
    /// regardless).
    fn release(&mut self, relay: &str, epoch: &str, through: Option<u64>, out: &mut Vec<Admitted>) {
        let k = (relay.to_string(), epoch.to_string());
        if let Some(h) = self.held.get(&k) {
            if through.is_some_and(|t| t < h.through) {
                return;
            }
        }
        if let Some(h) = self.held.remove(&k) {
            out.extend(h.events);
        }
    }

    fn release_overdue(&mut self, out: &mut Vec<Admitted>) {
        let overdue: Vec<(String, String)> = self
            .held
            .iter()
            .filter(|(_, h)| h.since.elapsed() > HOLD_AT_MOST)
            .map(|(k, _)| k.clone())
            .collect();
        for (relay, epoch) in overdue {
            warn!(relay = %relay, "missed events of relay {relay} are still being fetched after {}s; processing newer ones now, out of order", HOLD_AT_MOST.as_secs());
            self.release(&relay, &epoch, None, out);
        }
    }

    /// Admit one received message on its own, or count and log why not.
    fn admit_one(&mut self, received: Received) -> Option<Admitted> {
        let Received {
            frames,
            source,
            replayed,
            parsed,
            ..
        } = received;
        if let Some(event) = parsed {
            // Built and authenticated by its source (an AMQP broker): no signatures to
            // check, and no dedupe window, since a redelivered copy must reach the store,
            // which files a (rule, uuid) once; dropping it here could ack it before the
            // first copy is stored.
            self.metrics.inc("hark_events_received_total", &[]);
            self.metrics.inc("hark_events_admitted_total", &[]);
            return Some(Admitted {
                event: *event,
                report: None,
            });
        }
        if let Some(beat) = Heartbeat::from_frames(&frames) {
            match beat {
                Ok(beat) => {
                    self.beat(&beat);
                    let gap = self
                        .sequences
                        .heartbeat(&beat.relay, &beat.epoch, beat.head);
                    self.gap(gap);
                }
                Err(e) => self.refusals.refuse(
                    source,
                    None,
                    &Refusal::Envelope(EnvelopeError::MalformedJson(format!("heartbeat: {e}"))),
                ),
            }
            return None;
        }
        self.metrics.inc("hark_events_received_total", &[]);
        let now = Utc::now();
        let checked = match self.mode {
            Mode::Enforce => self
                .gate
                .check_frames(frames, now, replayed.is_some())
                .map(|e| (e, None)),
            Mode::Observe => Event::from_frames(frames).map_err(Refused::from).map(|e| {
                let report = sign::check(&e.body, self.gate.policy().keyring());
                (e, Some(report))
            }),
        };
        let (mut event, report) = match checked {
            Ok(ok) => ok,
            Err(refused) => {
                self.refusals
                    .refuse(source, refused.uuid.as_deref(), &refused.refusal);
                return None;
            }
        };
        if !self.dedupe.first_seen(&event.uuid, Instant::now()) {
            // The same event through a second relay: expected, so only counted.
            self.metrics.inc("hark_events_duplicate_total", &[]);
            return None;
        }
        if event.relay.is_none() {
            // A fedmsg frame from a journal: its place in the relay's stream.
            event.relay = replayed;
        }
        if let Some(stamp) = &event.relay {
            let gap = self.sequences.observe(stamp);
            self.gap(gap);
        }
        self.metrics.inc("hark_events_admitted_total", &[]);
        Some(Admitted { event, report })
    }

    fn gap(&mut self, gap: Option<Gap>) {
        let Some(gap) = gap else { return };
        // A relay first heard of while listening (`since_ms`): what it received since is
        // fetched (the replay source logs it); how much that is is not known, so it is
        // not counted as a gap.
        if gap.since_ms.is_none() {
            if self.replaying {
                // fedmsg pass-through takes seqs too, so a gap may hold nothing new: the
                // replay source says what it recovered.
                debug!(relay = %gap.relay, epoch = %gap.epoch, "seq {}..={} of relay {} not seen here; fetching them", gap.after + 1, gap.before - 1, gap.relay);
            } else {
                warn!(relay = %gap.relay, epoch = %gap.epoch, "missed {} event(s) from relay {} (seq {}..={}; lost on the network, or published while this subscriber was down; no replay endpoint is configured to fetch them)", gap.missing(), gap.relay, gap.after + 1, gap.before - 1);
            }
            self.metrics.add(
                "hark_relay_gap_events_total",
                &[("relay", &gap.relay)],
                gap.missing() as f64,
            );
        }
        if self.replaying {
            let h = self
                .held
                .entry((gap.relay.clone(), gap.epoch.clone()))
                .or_insert_with(|| Held {
                    through: 0,
                    since: Instant::now(),
                    events: Vec::new(),
                });
            h.through = h.through.max(gap.before - 1);
        }
        self.gaps.push(gap);
    }

    fn beat(&mut self, beat: &Heartbeat) {
        let every = Duration::from_millis(beat.interval_ms.unwrap_or(5000).max(100));
        match self
            .beats
            .insert(beat.relay.clone(), (Instant::now(), every, false))
        {
            None => {
                info!(relay = %beat.relay, "first heartbeat from relay {} (one every {}s)", beat.relay, every.as_secs_f64())
            }
            Some((_, _, true)) => {
                info!(relay = %beat.relay, "relay {} sends heartbeats again", beat.relay)
            }
            Some(_) => {}
        }
        self.metrics
            .set("hark_relay_up", &[("relay", &beat.relay)], 1.0);
        self.health.heartbeat(&beat.relay);
        // Heartbeats of the live relays are the clock that notices the dead ones.
        self.tick();
    }

    /// Report relays whose heartbeats stopped: call now and then, also when nothing
    /// arrives (a dead relay sends nothing to notice it by).
    pub fn tick(&mut self) {
        if self.beats.is_empty()
            && !self.expected.is_empty()
            && !self.warned_unheard
            && self.started.elapsed() >= UNHEARD_AFTER
        {
            self.warned_unheard = true;
            warn!(
                "no relay has answered in {}s: no heartbeat from {} (is hark relay running there, and reachable? a relay with heartbeats off is never heard from)",
                UNHEARD_AFTER.as_secs(),
                self.expected.join(", ")
            );
        }
        for (relay, (last, every, silent)) in self.beats.iter_mut() {
            if *silent || last.elapsed() < *every * SILENT_AFTER_BEATS {
                continue;
            }
            *silent = true;
            self.health.silent(relay);
            warn!(relay = %relay, "relay {relay} sent no heartbeat for {}s (one is due every {}s): it is down, or the network to it is; events it publishes meanwhile are fetched once it is back", last.elapsed().as_secs(), every.as_secs_f64());
            self.metrics.set("hark_relay_up", &[("relay", relay)], 0.0);
        }
        self.health.publish();
    }

    /// Gaps found since the last call, for a source that can fetch them again (replay).
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    pub fn sequences(&self) -> &Sequences {
        &self.sequences
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrustConfig;
    use crate::event::keys::Keyring;

    fn admission() -> Admission {
        let cfg = TrustConfig {
            allow_unsigned: true,
            ..TrustConfig::default()
        };
        let policy = TrustPolicy::new(Keyring::default(), &[], &cfg).unwrap();
        Admission::new(
            Gate::new(policy, true, usize::MAX),
            Mode::Enforce,
            Dedupe::new(Duration::from_secs(60), 1000),
            Sequences::new([(("r".to_string(), "e".to_string()), 1)]),
            Registry::default(),
        )
        .with_replay()
    }

    fn stamped(seq: u64) -> Vec<Vec<u8>> {
        let body = serde_json::json!({
            "tag": "_lk.t.x", "uuid": format!("u{seq}"), "format": "1.0",
            "time": Utc::now().to_rfc3339(), "data": {},
            "unsigned": {"relay": "r", "epoch": "e", "seq": seq, "received": ""},
        });
        vec![b"_lk.t.x".to_vec(), serde_json::to_vec(&body).unwrap()]
    }

    fn uuids(out: &mut Vec<Admitted>) -> Vec<String> {
        out.drain(..).map(|a| a.event.uuid).collect()
    }

    #[test]
    fn live_events_behind_a_gap_wait_for_the_replay_and_run_in_publish_order() {
        let mut a = admission();
        let mut out = Vec::new();
        a.admit_into(Received::live(stamped(2), "relay"), &mut out);
        assert_eq!(uuids(&mut out), ["u2"]);
        a.admit_into(Received::live(stamped(5), "relay"), &mut out);
        a.admit_into(Received::live(stamped(6), "relay"), &mut out);
        assert!(out.is_empty(), "held behind the gap 3..=4");
        let gaps = a.take_gaps();
        assert_eq!((gaps[0].after, gaps[0].before), (2, 5));
        for seq in [3, 4] {
            let mut r = Received::live(stamped(seq), "replay");
            r.replayed = Some(crate::event::RelayStamp {
                relay: "r".into(),
                epoch: "e".into(),
                seq,
                received: String::new(),
            });
            a.admit_into(r, &mut out);
        }
        a.admit_into(
            Received {
                replay_done: Some(("r".into(), "e".into(), 4)),
                ..Received::live(Vec::new(), "replay")
            },
            &mut out,
        );
        assert_eq!(uuids(&mut out), ["u3", "u4", "u5", "u6"]);
        a.admit_into(Received::live(stamped(7), "relay"), &mut out);
        assert_eq!(
            uuids(&mut out),
            ["u7"],
            "nothing held once the gap is closed"
        );
    }

    #[test]
    fn without_replay_nothing_is_held() {
        let mut a = admission();
        a.replaying = false;
        let mut out = Vec::new();
        a.admit_into(Received::live(stamped(2), "relay"), &mut out);
        a.admit_into(Received::live(stamped(9), "relay"), &mut out);
        assert_eq!(uuids(&mut out), ["u2", "u9"]);
    }
}
