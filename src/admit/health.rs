//! What each source has been heard from, for `hark status`: per hark relay its last
//! heartbeat and last event and whether it went silent, per AMQP broker and for fedmsg
//! endpoints the last message. Admission notes them as frames arrive; once a second it
//! hands a snapshot to the jobs thread, which writes it to the state file every few
//! seconds, so another process can tell whether the daemon really receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One source as last heard from. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceHealth {
    /// The relay's name, the broker's name, or `fedmsg`.
    pub name: String,
    /// `relay`, `amqp` or `fedmsg`.
    pub kind: String,
    pub last_heartbeat: Option<i64>,
    pub last_event: Option<i64>,
    /// A relay whose heartbeats stopped (three intervals without one).
    pub silent: bool,
}

/// The latest snapshot, shared between admission and the jobs thread.
pub type Shared = Arc<Mutex<Option<Vec<SourceHealth>>>>;

#[derive(Debug, Default)]
pub struct Health {
    sources: HashMap<String, SourceHealth>,
    changed: bool,
    shared: Shared,
    published: Option<Instant>,
}

/// Snapshots are handed over at most this often.
const EVERY: Duration = Duration::from_secs(1);

impl Health {
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    fn entry(&mut self, name: &str, kind: &str) -> &mut SourceHealth {
        self.changed = true;
        if !self.sources.contains_key(name) {
            self.sources.insert(
                name.to_string(),
                SourceHealth {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    last_heartbeat: None,
                    last_event: None,
                    silent: false,
                },
            );
        }
        self.sources
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    pub fn event(&mut self, name: &str, kind: &str) {
        self.entry(name, kind).last_event = Some(crate::jobs::now_ms());
    }

    pub fn heartbeat(&mut self, relay: &str) {
        let s = self.entry(relay, "relay");
        s.last_heartbeat = Some(crate::jobs::now_ms());
        s.silent = false;
    }

    pub fn silent(&mut self, relay: &str) {
        self.entry(relay, "relay").silent = true;
    }

    /// Hand the snapshot over if anything changed since the last one, at most every
    /// [`EVERY`].
    pub fn publish(&mut self) {
        if !self.changed || self.published.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.changed = false;
        self.published = Some(Instant::now());
        let mut all: Vec<SourceHealth> = self.sources.values().cloned().collect();
        all.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        if let Ok(mut slot) = self.shared.lock() {
            *slot = Some(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_handed_over_only_when_something_changed() {
        let mut h = Health::default();
        let shared = h.shared();
        h.heartbeat("r1");
        h.event("r1", "relay");
        h.event("fedora", "amqp");
        h.silent("r1");
        h.publish();
        let snap = shared.lock().unwrap().take().expect("a snapshot");
        assert_eq!(snap.len(), 2);
        assert_eq!(
            (snap[0].kind.as_str(), snap[0].name.as_str()),
            ("amqp", "fedora")
        );
        assert!(snap[1].silent && snap[1].last_heartbeat.is_some() && snap[1].last_event.is_some());
        h.publish();
        assert!(shared.lock().unwrap().is_none(), "nothing new");
        h.heartbeat("r1");
        h.publish();
        assert!(
            shared.lock().unwrap().is_none(),
            "within a second of the last"
        );
        h.published = None;
        h.publish();
        let snap = shared.lock().unwrap().take().expect("a snapshot");
        assert!(!snap[1].silent, "a heartbeat again");
    }
}
