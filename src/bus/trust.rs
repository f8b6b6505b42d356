//! The trust policy: whether an event may pass, and why not.
//!
//! Every check the relay and the trigger daemon make before an event reaches a rule lives
//! here, in this order: signatures against the trusted keyring, per-signer topic grants,
//! unsigned events, freshness of `time`; then (by the caller, who owns the state) duplicate
//! uuids within a window. A refusal carries a stable `reason()` for counters and a message
//! that tells an admin what to change.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use tracing::warn;

use crate::config::TrustConfig;
use crate::event::keys::{KeyError, Keyring};
use crate::event::{sign, EnvelopeError, Event};
use crate::topic::TopicPattern;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Envelope(EnvelopeError),
    Oversized { size: usize, limit: usize },
    BadSignature { signer: String, reason: String },
    Unsigned,
    FedmsgNotAllowed,
    UntrustedSigners(Vec<String>),
    NotGranted { topic: String, signers: Vec<String> },
    Duplicate { uuid: String },
    BadTime(String),
    Stale { time: String, max_age: Duration },
    Future { time: String, max_future: Duration },
}

impl Refusal {
    /// Stable label for counters and acks.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Envelope(e) => e.reason(),
            Refusal::Oversized { .. } => "oversized",
            Refusal::BadSignature { .. } => "bad-signature",
            Refusal::Unsigned => "unsigned",
            Refusal::FedmsgNotAllowed => "fedmsg-not-allowed",
            Refusal::UntrustedSigners(_) => "untrusted-signer",
            Refusal::NotGranted { .. } => "topic-not-granted",
            Refusal::Duplicate { .. } => "duplicate",
            Refusal::BadTime(_) => "bad-time",
            Refusal::Stale { .. } => "stale",
            Refusal::Future { .. } => "future",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Envelope(e) => write!(f, "{e}"),
            Refusal::Oversized { size, limit } => write!(
                f,
                "message of {size} bytes exceeds the limit of {limit} bytes (relay.max_message_size)"
            ),
            Refusal::BadSignature { signer, reason } => write!(
                f,
                "signature by trusted signer {signer:?} is invalid ({reason}); the event was altered or signed with another key"
            ),
            Refusal::Unsigned => write!(
                f,
                "event carries no signature (sign it, or set trust.allow_unsigned / --allow-unsigned)"
            ),
            Refusal::FedmsgNotAllowed => write!(
                f,
                "fedmsg events are refused here (set trust.allow_fedmsg: true to admit them, unsigned)"
            ),
            Refusal::UntrustedSigners(names) => write!(
                f,
                "no trusted signer: signed only by {} (put their public keyfiles in the trusted keys directory)",
                names.join(", ")
            ),
            Refusal::NotGranted { topic, signers } => write!(
                f,
                "signer(s) {} may not publish topic {topic:?} (add a grant: trust.grants in hark.yaml or --grant SIGNER=GLOB)",
                signers.join(", ")
            ),
            Refusal::Duplicate { uuid } => write!(f, "uuid {uuid} was already seen within the dedupe window"),
            Refusal::BadTime(t) => write!(f, "time {t:?} is not an ISO 8601 timestamp"),
            Refusal::Stale { time, max_age } => write!(
                f,
                "time {time} is older than trust.max_age ({})",
                crate::duration::format(*max_age)
            ),
            Refusal::Future { time, max_future } => write!(
                f,
                "time {time} is more than trust.max_future ({}) ahead; check the sender's clock",
                crate::duration::format(*max_future)
            ),
        }
    }
}

impl From<EnvelopeError> for Refusal {
    fn from(e: EnvelopeError) -> Self {
        Refusal::Envelope(e)
    }
}

#[derive(Debug, Clone)]
struct Grant {
    signer: String,
    topics: Vec<TopicPattern>,
}

/// Signatures, grants, unsigned events and freshness. Cheap to clone; shared by workers.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keyring: Keyring,
    grants: Vec<Grant>,
    allow_unsigned: bool,
    max_age: Duration,
    max_future: Duration,
}

/// A grant given on the command line: `SIGNER=GLOB[,GLOB...]`.
pub fn parse_grant(text: &str) -> Result<(String, Vec<String>), String> {
    let (signer, globs) = text
        .split_once('=')
        .ok_or_else(|| format!("grant {text:?} must look like SIGNER=GLOB[,GLOB...]"))?;
    if signer.is_empty() || globs.is_empty() {
        return Err(format!(
            "grant {text:?} must look like SIGNER=GLOB[,GLOB...]"
        ));
    }
    Ok((
        signer.to_string(),
        globs.split(',').map(str::to_string).collect(),
    ))
}

impl TrustPolicy {
    pub fn new(
        keyring: Keyring,
        grants: &[(String, Vec<String>)],
        cfg: &TrustConfig,
    ) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for (signer, globs) in grants {
            let topics = globs
                .iter()
                .map(|g| TopicPattern::parse(g).map_err(|e| format!("grant for {signer:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(Grant {
                signer: signer.clone(),
                topics,
            });
        }
        Ok(TrustPolicy {
            keyring,
            grants: compiled,
            allow_unsigned: cfg.allow_unsigned,
            max_age: cfg.max_age,
            max_future: cfg.max_future,
        })
    }

    /// Build from config: load the trusted directory (a missing directory means no trusted
    /// keys) and merge the config grants with `extra_grants`. Returns key files that failed
    /// to load so the caller can log them.
    pub fn from_config(
        cfg: &TrustConfig,
        extra_grants: &[(String, Vec<String>)],
    ) -> Result<(Self, Vec<KeyError>), String> {
        let (keyring, errors) = if cfg.trusted_dir.is_dir() {
            Keyring::load_dir(&cfg.trusted_dir).map_err(|e| e.to_string())?
        } else {
            (Keyring::default(), Vec::new())
        };
        let mut grants: Vec<(String, Vec<String>)> = cfg
            .grants
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        grants.extend(extra_grants.iter().cloned());
        Ok((Self::new(keyring, &grants, cfg)?, errors))
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn allow_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    fn granted(&self, signer: &str, topic: &str) -> bool {
        self.grants
            .iter()
            .filter(|g| g.signer == signer || g.signer == "*")
            .any(|g| g.topics.iter().any(|t| t.matches(topic)))
    }

    /// Verify signatures and fill `event.signers`; then grants, unsigned and freshness.
    pub fn admit(&self, event: &mut Event, now: DateTime<Utc>) -> Result<(), Refusal> {
        let report = sign::check(&event.body, &self.keyring);
        if let Some((signer, reason)) = report.bad.into_iter().next() {
            return Err(Refusal::BadSignature { signer, reason });
        }
        event.signers = report.verified;
        if event.signers.is_empty() {
            if !self.allow_unsigned {
                return Err(if report.unknown.is_empty() {
                    Refusal::Unsigned
                } else {
                    Refusal::UntrustedSigners(report.unknown)
                });
            }
        } else if !event.signers.iter().any(|s| self.granted(s, &event.topic)) {
            return Err(Refusal::NotGranted {
                topic: event.topic.clone(),
                signers: event.signers.clone(),
            });
        }
        self.check_fresh(event.time.as_deref(), now)
    }

    fn check_fresh(&self, time: Option<&str>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let Some(text) = time else { return Ok(()) };
        let at = parse_event_time(text).ok_or_else(|| Refusal::BadTime(text.to_string()))?;
        let delta = now.signed_duration_since(at);
        if delta > chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX) {
            return Err(Refusal::Stale {
                time: text.to_string(),
                max_age: self.max_age,
            });
        }
        if -delta > chrono::Duration::from_std(self.max_future).unwrap_or(chrono::Duration::MAX) {
            return Err(Refusal::Future {
                time: text.to_string(),
                max_future: self.max_future,
            });
        }
        Ok(())
    }
}

/// Parse an event time: RFC 3339 with an offset, or Laniakea's naive `isoformat()`, which
/// is the sender's local time (we assume the same zone as ours).
pub fn parse_event_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .and_then(|naive| Local.from_local_datetime(&naive).earliest())
        .map(|t| t.with_timezone(&Utc))
}

/// Logs refusals (relay and daemon alike) without letting a flood of bad input flood the journal: the first few per
/// reason in each window are logged in full, the rest are summarized.
pub struct RefusalLog {
    window_start: Instant,
    logged: BTreeMap<&'static str, u32>,
    suppressed: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    const PER_WINDOW: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        RefusalLog {
            window_start: Instant::now(),
            logged: BTreeMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    pub fn refused(&mut self, source: &str, uuid: Option<&str>, refusal: &Refusal) {
        self.roll();
        let n = self.logged.entry(refusal.reason()).or_insert(0);
        if *n < Self::PER_WINDOW {
            *n += 1;
            warn!(
                reason = refusal.reason(),
                uuid = uuid.unwrap_or("-"),
                "refused {source} message: {refusal}"
            );
        } else {
            *self.suppressed.entry(refusal.reason()).or_insert(0) += 1;
        }
    }

    pub fn roll(&mut self) {
        if self.window_start.elapsed() < Self::WINDOW {
            return;
        }
        for (reason, count) in std::mem::take(&mut self.suppressed) {
            warn!(
                reason,
                "refused {count} more messages for reason {reason} in the last {}s",
                Self::WINDOW.as_secs()
            );
        }
        self.logged.clear();
        self.window_start = Instant::now();
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

/// Remembers uuids for a window, bounded in memory. Owned by one thread.
#[derive(Debug)]
pub struct Dedupe {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Dedupe {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Dedupe {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `uuid` is seen within the window.
    pub fn first_seen(&mut self, uuid: &str, now: Instant) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= self.window && self.order.len() < self.capacity {
                break;
            }
            if let Some((at, old)) = self.order.pop_front() {
                if self.seen.get(&old) == Some(&at) {
                    self.seen.remove(&old);
                }
            }
        }
        if self.seen.contains_key(uuid) {
            return false;
        }
        self.seen.insert(uuid.to_string(), now);
        self.order.push_back((now, uuid.to_string()));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::keys::SigningKey;
    use serde_json::json;

    fn policy(allow_unsigned: bool, grants: &[(&str, &str)]) -> (TrustPolicy, SigningKey) {
        let key = SigningKey::generate("archive");
        let mut ring = Keyring::default();
        ring.insert(key.verify_key());
        let grants: Vec<(String, Vec<String>)> = grants
            .iter()
            .map(|(s, g)| (s.to_string(), vec![g.to_string()]))
            .collect();
        let cfg = TrustConfig {
            allow_unsigned,
            ..TrustConfig::default()
        };
        (TrustPolicy::new(ring, &grants, &cfg).unwrap(), key)
    }

    fn event(topic: &str, time: &str, key: Option<&SigningKey>) -> Event {
        let mut body =
            json!({"tag": topic, "uuid": "u1", "format": "1.0", "time": time, "data": {}});
        if let Some(k) = key {
            sign::sign(&mut body, k).unwrap();
        }
        Event::from_value(body).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn fresh() -> String {
        Utc::now().to_rfc3339()
    }

    #[test]
    fn signed_and_granted_passes_with_signers() {
        let (p, key) = policy(false, &[("archive", "_lk.archive.**")]);
        let mut ev = event("_lk.archive.published", &fresh(), Some(&key));
        p.admit(&mut ev, now()).unwrap();
        assert_eq!(ev.signers, vec!["archive"]);
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let (p, key) = policy(false, &[("archive", "_lk.archive.**")]);
        let other = SigningKey::generate("stranger");
        let cases = [
            (
                event("_lk.jobs.x", &fresh(), Some(&key)),
                "topic-not-granted",
            ),
            (event("_lk.archive.x", &fresh(), None), "unsigned"),
            (
                event("_lk.archive.x", &fresh(), Some(&other)),
                "untrusted-signer",
            ),
            (
                event("_lk.archive.x", "2001-01-01T00:00:00", Some(&key)),
                "stale",
            ),
            (
                event("_lk.archive.x", "2999-01-01T00:00:00Z", Some(&key)),
                "future",
            ),
            (event("_lk.archive.x", "yesterday", Some(&key)), "bad-time"),
        ];
        for (mut ev, reason) in cases {
            assert_eq!(
                p.admit(&mut ev, now()).unwrap_err().reason(),
                reason,
                "{}",
                ev.topic
            );
        }
        let mut tampered = event("_lk.archive.x", &fresh(), Some(&key));
        tampered.body["data"] = json!({"evil": true});
        assert_eq!(
            p.admit(&mut tampered, now()).unwrap_err().reason(),
            "bad-signature"
        );
    }

    #[test]
    fn wildcard_grant_and_allow_unsigned() {
        let (p, key) = policy(true, &[("*", "**")]);
        let mut ev = event("_lk.anything", &fresh(), Some(&key));
        p.admit(&mut ev, now()).unwrap();
        let mut unsigned = event("_lk.anything", &fresh(), None);
        p.admit(&mut unsigned, now()).unwrap();
        assert!(unsigned.signers.is_empty());
    }

    #[test]
    fn naive_local_times_parse() {
        assert!(parse_event_time("2023-11-30T12:00:00.123456").is_some());
        assert!(parse_event_time("2023-11-30T12:00:00").is_some());
        assert!(parse_event_time("2023-11-30T12:00:00+02:00").is_some());
        assert!(parse_event_time("nope").is_none());
    }

    #[test]
    fn dedupe_forgets_after_window_and_bounds_memory() {
        let mut d = Dedupe::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        assert!(d.first_seen("a", t0));
        assert!(!d.first_seen("a", t0));
        assert!(d.first_seen("a", t0 + Duration::from_secs(11)));
        for u in ["b", "c", "d", "e"] {
            d.first_seen(u, t0 + Duration::from_secs(12));
        }
        assert!(d.len() <= 3);
    }
}
