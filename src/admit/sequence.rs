//! Relay sequence numbers: every hark relay stamps `unsigned: {relay, epoch, seq}`, so a
//! subscriber can tell when it missed events. The last seq seen per (relay, epoch) is kept
//! here; the daemon persists it with the jobs those events filed, so a restart resumes from
//! the right place.

use std::collections::HashMap;

use crate::event::RelayStamp;

/// Events a subscriber never saw: seqs `after + 1 ..= before - 1` of one relay epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub relay: String,
    pub epoch: String,
    pub after: u64,
    pub before: u64,
}

impl Gap {
    pub fn missing(&self) -> u64 {
        self.before.saturating_sub(self.after).saturating_sub(1)
    }
}

/// The last seq seen per (relay, epoch).
#[derive(Debug, Default)]
pub struct Sequences {
    last: HashMap<(String, String), u64>,
}

impl Sequences {
    /// Start from what an earlier run persisted.
    pub fn new(known: impl IntoIterator<Item = ((String, String), u64)>) -> Self {
        Sequences {
            last: known.into_iter().collect(),
        }
    }

    /// Note `stamp`; the gap before it, if this relay epoch skipped numbers.
    pub fn observe(&mut self, stamp: &RelayStamp) -> Option<Gap> {
        let key = (stamp.relay.clone(), stamp.epoch.clone());
        let last = self.last.entry(key).or_insert(0);
        let gap = (*last > 0 && stamp.seq > *last + 1).then(|| Gap {
            relay: stamp.relay.clone(),
            epoch: stamp.epoch.clone(),
            after: *last,
            before: stamp.seq,
        });
        *last = (*last).max(stamp.seq);
        gap
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
    fn a_first_sight_of_a_relay_is_no_gap() {
        let mut s = Sequences::default();
        assert_eq!(s.observe(&stamp(318)), None);
        assert_eq!(s.last("r", "e"), Some(318));
    }
}
