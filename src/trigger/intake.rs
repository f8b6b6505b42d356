//! Admission of received frames for the daemon: parse, trust, dedupe, relay sequence gaps.
//! Runs on the admission thread (signature checks are CPU work, never on the event loop).

use std::time::Instant;

use chrono::Utc;
use tracing::warn;

use crate::bus::trust::{Dedupe, Refusal, RefusalLog, TrustPolicy};
use crate::event::{Event, Format};
use crate::metrics::Registry;

/// Admission of received frames: parse, trust, dedupe, relay sequence gaps.
pub(super) struct Intake {
    pub(super) policy: TrustPolicy,
    pub(super) allow_fedmsg: bool,
    pub(super) dedupe: Dedupe,
    pub(super) log: RefusalLog,
    pub(super) metrics: Registry,
    pub(super) last_seq: std::collections::HashMap<(String, String), u64>,
}

impl Intake {
    fn refuse(&mut self, uuid: Option<&str>, refusal: &Refusal) {
        self.metrics
            .inc("hark_events_refused_total", &[("reason", refusal.reason())]);
        self.log.refused("received", uuid, refusal);
    }

    pub(super) fn admit(&mut self, frames: Vec<Vec<u8>>) -> Option<Event> {
        self.metrics.inc("hark_events_received_total", &[]);
        let mut event = match Event::from_frames(frames) {
            Ok(e) => e,
            Err(e) => {
                self.refuse(None, &Refusal::Envelope(e));
                return None;
            }
        };
        // Trust before dedupe: a forged event must not be able to burn a real event's uuid.
        match event.format {
            Format::Laniakea => {
                if let Err(r) = self.policy.admit(&mut event, Utc::now()) {
                    self.refuse(Some(&event.uuid), &r);
                    return None;
                }
            }
            Format::Fedmsg if !self.allow_fedmsg => {
                self.refuse(Some(&event.uuid), &Refusal::FedmsgNotAllowed);
                return None;
            }
            Format::Fedmsg => {}
        }
        if !self.dedupe.first_seen(&event.uuid, Instant::now()) {
            // The same event through a second relay: expected, so only counted.
            self.metrics.inc("hark_events_duplicate_total", &[]);
            return None;
        }
        if let Some(stamp) = &event.relay {
            let key = (stamp.relay.clone(), stamp.epoch.clone());
            if let Some(last) = self.last_seq.get(&key) {
                if stamp.seq > last + 1 {
                    warn!(relay = %stamp.relay, "missed {} event(s) from relay {} (seq {} after {}; lost on the network, or published while this daemon was down)", stamp.seq - last - 1, stamp.relay, stamp.seq, last);
                    self.metrics.add(
                        "hark_relay_gap_events_total",
                        &[("relay", &stamp.relay)],
                        (stamp.seq - last - 1) as f64,
                    );
                }
            }
            let entry = self.last_seq.entry(key).or_insert(0);
            *entry = (*entry).max(stamp.seq);
        }
        self.metrics.inc("hark_events_admitted_total", &[]);
        Some(event)
    }
}
