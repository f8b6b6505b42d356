//! The uuid dedupe window: the same event arrives once per relay (and again through replay),
//! and a replayed submission must not run twice.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// foldhash, seeded per process: SipHash over up to a million uuids was a fifth of the
/// relay's CPU on pass-through, and a per-process random seed still keeps a submitter from
/// choosing colliding uuids.
type Seen = HashMap<Arc<str>, Instant, foldhash::fast::RandomState>;

/// Remembers uuids for a window, bounded in memory. Owned by one thread.
#[derive(Debug)]
pub struct Dedupe {
    window: Duration,
    capacity: usize,
    /// The map and the queue share each uuid: one allocation per event on the relay's
    /// pass-through path, not two.
    seen: Seen,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedupe {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Dedupe {
            window,
            capacity: capacity.max(1),
            seen: Seen::default(),
            order: VecDeque::new(),
        }
    }

    /// True the first time `uuid` is seen within the window.
    pub fn first_seen(&mut self, uuid: &str, now: Instant) -> bool {
        self.admit(uuid, now).is_some()
    }

    /// The first time `uuid` is seen within the window, the window's own copy of it, which
    /// the caller may keep (the relay's pass-through allocates one uuid per event, not two).
    pub fn admit(&mut self, uuid: &str, now: Instant) -> Option<Arc<str>> {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= self.window && self.order.len() < self.capacity {
                break;
            }
            if let Some((at, old)) = self.order.pop_front() {
                // One lookup, where get-then-remove hashed the uuid twice.
                if let Entry::Occupied(e) = self.seen.entry(old) {
                    if *e.get() == at {
                        e.remove();
                    }
                }
            }
        }
        // One hash and one probe; the key is allocated first because it is almost always
        // new (a duplicate frees it again).
        match self.seen.entry(Arc::from(uuid)) {
            Entry::Occupied(_) => None,
            Entry::Vacant(slot) => {
                let uuid = slot.key().clone();
                self.order.push_back((now, uuid.clone()));
                slot.insert(now);
                Some(uuid)
            }
        }
    }

    /// Take back a uuid that was seen but not published after all (the journal failed),
    /// so the publisher's resend is not taken for a duplicate.
    pub fn forget(&mut self, uuid: &str) {
        self.seen.remove(uuid);
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
