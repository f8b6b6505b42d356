//! Relay heartbeats: every few seconds a relay publishes `[_hark.heartbeat, json]` with its
//! name, epoch and head seq. A subscriber learns from it that it missed the end of a stream
//! (head beyond the last seq it saw), that a relay is gone (no heartbeat), or that a relay
//! came back with an epoch whose first events it never saw.
//!
//! The frame is not an event: it carries no uuid and no signature and never reaches a rule.
//! Consumers that subscribe to Laniakea prefixes (`_lk.`) never receive it.

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The topic frame of a heartbeat (also its subscription prefix).
pub const TOPIC: &str = "_hark.heartbeat";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub relay: String,
    pub epoch: String,
    /// The last seq published in this epoch (0 before the first).
    pub head: u64,
    pub time: String,
    /// How often the relay sends one, so a subscriber knows when one is overdue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

impl Heartbeat {
    pub fn new(relay: &str, epoch: &str, head: u64, interval: std::time::Duration) -> Self {
        Heartbeat {
            relay: relay.to_string(),
            epoch: epoch.to_string(),
            head,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            interval_ms: u64::try_from(interval.as_millis()).ok(),
        }
    }

    pub fn to_frames(&self) -> [Vec<u8>; 2] {
        [
            TOPIC.as_bytes().to_vec(),
            serde_json::to_vec(self).unwrap_or_default(),
        ]
    }

    /// `Some` when `frames` are a heartbeat (well-formed or not: `Err` says why not).
    pub fn from_frames(frames: &[Vec<u8>]) -> Option<Result<Heartbeat, String>> {
        let [topic, body] = frames else {
            return None;
        };
        if topic.as_slice() != TOPIC.as_bytes() {
            return None;
        }
        Some(serde_json::from_slice(body).map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_other_frames_are_not_heartbeats() {
        let hb = Heartbeat::new("r", "e", 42, std::time::Duration::from_secs(5));
        let frames = hb.to_frames();
        assert_eq!(Heartbeat::from_frames(&frames), Some(Ok(hb)));
        assert_eq!(
            Heartbeat::from_frames(&[b"_lk.x".to_vec(), b"{}".to_vec()]),
            None
        );
        assert!(matches!(
            Heartbeat::from_frames(&[TOPIC.as_bytes().to_vec(), b"{".to_vec()]),
            Some(Err(_))
        ));
    }
}
