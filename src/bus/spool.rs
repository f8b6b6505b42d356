//! The publisher's spool: signed events that no relay took in time wait here, one file
//! each, until `hark publish --flush-spool` delivers them in the order they were spooled.
//!
//! A file is written aside, synced and renamed into place, so a crash never leaves half an
//! event that a flush would send. Names sort by spool time (`<ms>-<seq>-<uuid>.json`), which
//! is the delivery order. Events a relay refused for good move to `rejected/` with the
//! reason beside them, so one bad event never blocks the ones behind it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// One spooled event.
#[derive(Debug)]
pub struct Spooled {
    pub path: PathBuf,
    pub event: Value,
}

pub struct Spool {
    dir: PathBuf,
}

/// What [`Spool::list`] finds: the events in order, and files it had to set aside (with why).
pub struct Listing {
    pub events: Vec<Spooled>,
    pub set_aside: Vec<(PathBuf, String)>,
}

/// Orders two files spooled in the same millisecond by the same process.
static SPOOLED_HERE: AtomicU32 = AtomicU32::new(0);

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Spool { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default spool: `/var/spool/hark` for root, else `$XDG_STATE_HOME/hark/spool`
    /// (`~/.local/state/hark/spool`).
    pub fn default_dir() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/spool/hark");
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        state.join("hark").join("spool")
    }

    /// Write `event` durably; returns its path.
    pub fn put(&self, event: &Value) -> std::io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let uuid = event
            .get("uuid")
            .and_then(Value::as_str)
            .unwrap_or("no-uuid")
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
        let name = format!(
            "{:013}-{:04}-{uuid}.json",
            chrono::Utc::now().timestamp_millis(),
            SPOOLED_HERE.fetch_add(1, Ordering::Relaxed) % 10_000,
        );
        let part = self.dir.join(format!(".{name}.part"));
        let path = self.dir.join(&name);
        let mut file = File::create(&part)?;
        file.write_all(&crate::event::canonical::to_vec(event).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&part, &path)?;
        // The rename is durable only once the directory is synced too.
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Spooled events in delivery order. A file that cannot be read or parsed is moved to
    /// `rejected/` (and reported), since no flush could ever send it.
    pub fn list(&self) -> std::io::Result<Listing> {
        let mut names: Vec<PathBuf> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|x| x == "json")
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        names.sort();
        let mut events = Vec::new();
        let mut broken = Vec::new();
        for path in names {
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(event) => events.push(Spooled { path, event }),
                Err(e) => {
                    let reason = format!("unreadable spool file: {e}");
                    self.reject(&path, &reason)?;
                    broken.push((path, reason));
                }
            }
        }
        Ok(Listing {
            events,
            set_aside: broken,
        })
    }

    /// Delivered: forget it.
    pub fn done(&self, spooled: &Spooled) -> std::io::Result<()> {
        fs::remove_file(&spooled.path)
    }

    /// Replace a spooled event by a newer form of itself (re-stamped), keeping its place.
    pub fn replace(&self, spooled: &mut Spooled, event: Value) -> std::io::Result<()> {
        let part = spooled.path.with_extension("json.part");
        let mut file = File::create(&part)?;
        file.write_all(&crate::event::canonical::to_vec(&event).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&part, &spooled.path)?;
        spooled.event = event;
        Ok(())
    }

    /// Refused for good: move to `rejected/` with the reason in `<name>.reason`.
    pub fn reject(&self, path: &Path, reason: &str) -> std::io::Result<PathBuf> {
        let rejected = self.dir.join("rejected");
        fs::create_dir_all(&rejected)?;
        let name = path.file_name().unwrap_or_default();
        let target = rejected.join(name);
        fs::rename(path, &target)?;
        fs::write(target.with_extension("reason"), format!("{reason}\n"))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spooled_events_come_back_in_order_and_broken_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        let first = spool.put(&json!({"uuid": "a/1", "n": 1})).unwrap();
        spool.put(&json!({"uuid": "b", "n": 2})).unwrap();
        fs::write(
            spool.dir().join("0000000000000-0000-zzz.json"),
            b"{not json",
        )
        .unwrap();
        assert!(first
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("-a_1.json"));
        let Listing {
            events,
            set_aside: broken,
        } = spool.list().unwrap();
        assert_eq!(
            events
                .iter()
                .map(|s| s.event["n"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(broken.len(), 1);
        assert!(spool
            .dir()
            .join("rejected/0000000000000-0000-zzz.reason")
            .exists());
        spool.done(&events[0]).unwrap();
        assert_eq!(spool.list().unwrap().events.len(), 1);
    }
}
