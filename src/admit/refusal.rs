//! Why an event was refused, and the log of refusals.
//!
//! A refusal carries a stable `reason()` for counters and acks, and a message that tells an
//! admin what to change. The log keeps a flood of bad input from flooding the journal: the
//! first few refusals per reason in each window are logged in full, the rest summarized.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::event::EnvelopeError;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Envelope(EnvelopeError),
    Oversized {
        size: usize,
        limit: usize,
    },
    BadSignature {
        signer: String,
        reason: String,
    },
    /// An OpenPGP signature by a known key that may not sign now.
    KeyUnusable {
        problem: crate::event::openpgp::Problem,
        reason: String,
    },
    Unsigned,
    FedmsgNotAllowed,
    UntrustedSigners(Vec<String>),
    NotGranted {
        topic: String,
        signers: Vec<String>,
    },
    Duplicate {
        uuid: String,
    },
    BadTime(String),
    Stale {
        time: String,
        max_age: Duration,
    },
    Future {
        time: String,
        max_future: Duration,
    },
    /// The relay could not journal the event, so it did not publish it either.
    JournalUnavailable(String),
    /// The relay could not countersign or encode an event it had admitted: its fault, not
    /// the publisher's, so not reported as malformed input.
    RelayError(String),
}

impl Refusal {
    /// Stable label for counters and acks.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Envelope(e) => e.reason(),
            Refusal::Oversized { .. } => "oversized",
            Refusal::BadSignature { .. } => "bad-signature",
            Refusal::KeyUnusable { problem, .. } => match problem {
                crate::event::openpgp::Problem::Expired => "key-expired",
                crate::event::openpgp::Problem::Revoked => "key-revoked",
                crate::event::openpgp::Problem::NotForSigning => "key-not-for-signing",
                crate::event::openpgp::Problem::Bad => "bad-signature",
            },
            Refusal::Unsigned => "unsigned",
            Refusal::FedmsgNotAllowed => "fedmsg-not-allowed",
            Refusal::UntrustedSigners(_) => "untrusted-signer",
            Refusal::NotGranted { .. } => "topic-not-granted",
            Refusal::Duplicate { .. } => "duplicate",
            Refusal::BadTime(_) => "bad-time",
            Refusal::Stale { .. } => "stale",
            Refusal::Future { .. } => "future",
            Refusal::JournalUnavailable(_) => crate::journal::REFUSAL_REASON,
            Refusal::RelayError(_) => "relay-error",
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
            Refusal::KeyUnusable { reason, .. } => {
                write!(f, "{reason}: its signatures are refused")
            }
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
            Refusal::JournalUnavailable(why) => write!(
                f,
                "not published: {why}; the relay takes events again once its journal can be written (try again later)"
            ),
            Refusal::RelayError(why) => write!(
                f,
                "the relay could not countersign or encode the event ({why}); it is not published"
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
