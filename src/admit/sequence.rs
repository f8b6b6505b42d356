//! Relay sequence numbers: every hark relay stamps `unsigned: {relay, epoch, seq}`, so a
//! subscriber can tell when it missed events. The last seq seen per (relay, epoch) is kept
//! here; the daemon persists it with the jobs those events filed, so a restart resumes from
//! the right place.

use std::collections::{HashMap, HashSet};

use crate::event::RelayStamp;

/// Events a subscriber never saw: seqs `after + 1 ..= before - 1` of one relay epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub relay: String,
    pub epoch: String,
    pub after: u64,
    pub before: u64,
    /// For a relay first heard of while this subscriber was already listening: only what
    /// it received from this time on (ms since the Unix epoch, its clock) is missing,
    /// not its whole journal.
    pub since_ms: Option<i64>,
}

impl Gap {
    pub fn missing(&self) -> u64 {
        self.before.saturating_sub(self.after).saturating_sub(1)
    }
}

/// The last seq seen per (relay, epoch), and how far each epoch is known to reach.
#[derive(Debug, Default)]
pub struct Sequences {
    last: HashMap<(String, String), u64>,
    /// The highest seq known to exist per (relay, epoch): gaps up to here were reported.
    noticed: HashMap<(String, String), u64>,
    relays: HashSet<String>,
    /// Where a relay never seen before starts: at its head, or (with replay) at what it
    /// received since this subscriber has been listening.
    new_relays: NewRelays,
}

/// Where a relay never heard of before starts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum NewRelays {
    /// At its head: nothing before is fetched (no replay, or a subscriber's first relay).
    #[default]
    AtHead,
    /// From what it received since this time (ms): the subscriber was listening then,
    /// so events published to that relay since were meant for it. `None` until the first
    /// relay is heard of, which starts at its head and sets the time.
    Since(Option<i64>),
}

/// Clocks of relay hosts and of this one differ: a new relay is asked for a little more
/// than what it received since, and what came twice is dropped by uuid.
pub const CLOCK_SKEW_MS: i64 = 30_000;

impl Sequences {
    /// Start from what an earlier run persisted.
    pub fn new(known: impl IntoIterator<Item = ((String, String), u64)>) -> Self {
        let last: HashMap<(String, String), u64> = known.into_iter().collect();
        let relays = last.keys().map(|(relay, _)| relay.clone()).collect();
        Sequences {
            noticed: last.clone(),
            last,
            relays,
            new_relays: NewRelays::AtHead,
        }
    }

    /// Catch up on relays first heard of later (`NewRelays::Since`), for a subscriber
    /// that can fetch from the relays' journals.
    pub fn with_new_relays(mut self, new_relays: NewRelays) -> Self {
        self.new_relays = new_relays;
        self
    }

    /// A relay heard of for the first time, whose next seq is `next`: where it starts.
    fn first_heard(&mut self, relay: &str, epoch: &str, next: u64) -> Option<Gap> {
        self.relays.insert(relay.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        match self.new_relays {
            NewRelays::AtHead => None,
            NewRelays::Since(None) => {
                self.new_relays = NewRelays::Since(Some(now));
                None
            }
            NewRelays::Since(Some(since)) => (next > 1).then(|| Gap {
                relay: relay.to_string(),
                epoch: epoch.to_string(),
                after: 0,
                before: next,
                since_ms: Some(since.saturating_sub(CLOCK_SKEW_MS)),
            }),
        }
    }

    /// Note an event's stamp; the gap before it, if this relay epoch skipped numbers, or if
    /// it is a new epoch of a relay seen before (its first events never arrived here).
    pub fn observe(&mut self, stamp: &RelayStamp) -> Option<Gap> {
        let gap = if self.relays.contains(&stamp.relay) {
            self.gap_before(&stamp.relay, &stamp.epoch, stamp.seq)
        } else {
            self.first_heard(&stamp.relay, &stamp.epoch, stamp.seq)
        };
        let key = (stamp.relay.clone(), stamp.epoch.clone());
        let last = self.last.entry(key.clone()).or_insert(0);
        *last = (*last).max(stamp.seq);
        let last = *last;
        let noticed = self.noticed.entry(key).or_insert(0);
        *noticed = (*noticed).max(last);
        gap
    }

    /// Note a heartbeat: `head` is the last seq the relay published. Events up to it that
    /// never arrived are a gap, reported once.
    pub fn heartbeat(&mut self, relay: &str, epoch: &str, head: u64) -> Option<Gap> {
        let key = (relay.to_string(), epoch.to_string());
        if !self.relays.contains(relay) {
            // A relay never seen before: at its head, or from what it received since this
            // subscriber listens; never its whole history.
            let gap = self.first_heard(relay, epoch, head.saturating_add(1));
            self.last.insert(key.clone(), head);
            self.noticed.insert(key, head);
            return gap;
        }
        let gap = self.gap_before(relay, epoch, head.saturating_add(1));
        let noticed = self.noticed.entry(key.clone()).or_insert(0);
        *noticed = (*noticed).max(head);
        self.last.entry(key).or_insert(0);
        gap
    }

    /// The gap between what this epoch is known to reach and `next`, for a relay seen before.
    fn gap_before(&self, relay: &str, epoch: &str, next: u64) -> Option<Gap> {
        if !self.relays.contains(relay) {
            return None;
        }
        let key = (relay.to_string(), epoch.to_string());
        let known = self.noticed.get(&key).copied().unwrap_or(0);
        (next > known + 1).then(|| Gap {
            relay: relay.to_string(),
            epoch: epoch.to_string(),
            after: known,
            before: next,
            since_ms: None,
        })
    }

    pub fn last(&self, relay: &str, epoch: &str) -> Option<u64> {
        self.last
            .get(&(relay.to_string(), epoch.to_string()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64) -> RelayStamp {
        RelayStamp {
            relay: "r".into(),
            epoch: "e".into(),
            seq,
            received: String::new(),
        }
    }

    #[test]
    fn gaps_are_reported_once_and_old_seqs_never_move_back() {
        let mut s = Sequences::new([(("r".to_string(), "e".to_string()), 3)]);
        assert_eq!(s.observe(&stamp(4)), None);
        let gap = s.observe(&stamp(9)).expect("5..=8 missing");
        assert_eq!((gap.after, gap.before, gap.missing()), (4, 9, 4));
        // A late or replayed event neither reports a gap nor rewinds the mark.
        assert_eq!(s.observe(&stamp(6)), None);
        assert_eq!(s.last("r", "e"), Some(9));
    }

    #[test]
    fn heartbeats_reveal_a_lost_tail_once_and_a_new_epoch_from_its_start() {
        let mut s = Sequences::new([(("r".to_string(), "e".to_string()), 3)]);
        let gap = s.heartbeat("r", "e", 7).expect("4..=7 never arrived");
        assert_eq!((gap.after, gap.before), (3, 8));
        assert_eq!(s.heartbeat("r", "e", 7), None, "reported once");
        // The relay came back with a new journal: everything of the new epoch is missing.
        let gap = s.heartbeat("r", "e2", 2).expect("e2 1..=2 never arrived");
        assert_eq!((gap.epoch.as_str(), gap.after, gap.before), ("e2", 0, 3));
        // A replayed event fills in without another report.
        let mut replayed = stamp(1);
        replayed.epoch = "e2".into();
        assert_eq!(s.observe(&replayed), None);
    }

    #[test]
    fn a_relay_never_seen_starts_at_its_head() {
        let mut s = Sequences::default();
        assert_eq!(s.heartbeat("r", "e", 500), None);
        assert_eq!(s.observe(&stamp(501)), None);
        assert!(s.observe(&stamp(503)).is_some());
    }

    #[test]
    fn a_first_sight_of_a_relay_is_no_gap() {
        let mut s = Sequences::default();
        assert_eq!(s.observe(&stamp(318)), None);
        assert_eq!(s.last("r", "e"), Some(318));
    }

    #[test]
    fn a_relay_first_heard_of_later_is_caught_up_from_then_and_the_first_at_its_head() {
        let mut s = Sequences::default();
        assert_eq!(
            s.heartbeat("a", "e", 9),
            None,
            "without replay: at its head"
        );
        let mut s = Sequences::default().with_new_relays(NewRelays::Since(None));
        let before = chrono::Utc::now().timestamp_millis();
        assert_eq!(
            s.heartbeat("a", "e", 9),
            None,
            "the first relay: at its head"
        );
        let gap = s.heartbeat("b", "f", 5).expect("b is caught up");
        assert_eq!((gap.relay.as_str(), gap.after, gap.before), ("b", 0, 6));
        let since = gap.since_ms.expect("by time");
        assert!(
            since >= before - CLOCK_SKEW_MS && since <= before,
            "{since} {before}"
        );
        assert_eq!(s.heartbeat("b", "f", 5), None, "once");
        let c = RelayStamp {
            relay: "c".into(),
            ..stamp(3)
        };
        let gap = s.observe(&c).expect("an event first: the seqs before it");
        assert_eq!((gap.after, gap.before), (0, 3));
        assert_eq!(s.heartbeat("d", "g", 0), None, "nothing published yet");
        // After a restart: from when the daemon last stored an event.
        let mut s = Sequences::default().with_new_relays(NewRelays::Since(Some(1_000_000)));
        let gap = s.heartbeat("a", "e", 2).expect("even the first");
        assert_eq!(gap.since_ms, Some(1_000_000 - CLOCK_SKEW_MS));
    }
}
