//! Rule reloading for the daemon: each file keeps its last good version when an edit breaks
//! it, and a new rule set replaces the old one atomically (an `Arc` swap) so that running
//! jobs, which hold their own copies, are unaffected.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{error, info, warn};

use crate::rules::compile::FileRules;
use crate::rules::load::{discover, load_file, Notices};
use crate::rules::set::RuleSet;

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    masked: bool,
}

pub struct RuleCache {
    dirs: Vec<PathBuf>,
    /// File name to (stamp seen, last good compile).
    files: BTreeMap<String, (Stamp, Option<FileRules>)>,
    set: Arc<RuleSet>,
    /// Missing directories and skipped files last warned about.
    notices: Notices,
    /// Files and rules that failed to load since `take_errors` last asked.
    errors: u64,
}

fn stamp(path: &std::path::Path, masked: bool) -> Stamp {
    let meta = std::fs::metadata(path).ok();
    Stamp {
        path: path.to_path_buf(),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        len: meta.map(|m| m.len()).unwrap_or(0),
        masked,
    }
}

impl RuleCache {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let (set, _) = RuleSet::build(&[]);
        let mut cache = RuleCache {
            dirs,
            files: BTreeMap::new(),
            set: Arc::new(set),
            notices: Notices::default(),
            errors: 0,
        };
        cache.reload(true);
        cache
    }

    /// How many files and rules failed to load since the last call (for
    /// `hark_rule_reload_errors_total`).
    pub fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    pub fn set(&self) -> Arc<RuleSet> {
        self.set.clone()
    }

    /// Re-read changed files (all files when `force`). Returns true when the rule set was
    /// rebuilt.
    pub fn reload(&mut self, force: bool) -> bool {
        let (found, dir_errors, notices) = discover(&self.dirs);
        for e in dir_errors {
            warn!("{e}");
        }
        // Said once, and again only when it changes: reloads run every few seconds.
        if notices != self.notices {
            for line in notices.lines() {
                warn!("{line}");
            }
            self.notices = notices;
        }
        let mut changed = force;
        let mut next: BTreeMap<String, (Stamp, Option<FileRules>)> = BTreeMap::new();
        for d in found {
            let st = stamp(&d.path, d.masked);
            let previous = self.files.remove(&d.file_name);
            let unchanged = previous.as_ref().is_some_and(|(old, _)| *old == st);
            if unchanged && !force {
                if let Some(prev) = previous {
                    next.insert(d.file_name, prev);
                }
                continue;
            }
            changed = true;
            if d.masked {
                info!(file = %d.path.display(), "rule file masked");
                next.insert(d.file_name, (st, None));
                continue;
            }
            match load_file(&d.path) {
                Ok(rules) => {
                    info!(file = %d.path.display(), rules = rules.rules.len(), "rule file loaded");
                    next.insert(d.file_name, (st, Some(rules)));
                }
                Err(e) => {
                    self.errors += 1;
                    let kept = previous.and_then(|(_, good)| good);
                    error!(
                        file = %d.path.display(),
                        "{}; {}",
                        e.to_string().trim_end(),
                        if kept.is_some() { "keeping its last good version" } else { "none of its rules are loaded" }
                    );
                    next.insert(d.file_name, (st, kept));
                }
            }
        }
        if !self.files.is_empty() {
            for (name, (st, _)) in std::mem::take(&mut self.files) {
                info!(file = %st.path.display(), "rule file {name} removed");
            }
            changed = true;
        }
        self.files = next;
        if changed {
            let compiled: Vec<FileRules> = self
                .files
                .values()
                .filter_map(|(_, good)| good.clone())
                .collect();
            let (set, refused) = RuleSet::build(&compiled);
            for e in refused {
                self.errors += 1;
                error!("{}", e.to_string().trim_end());
            }
            if set.is_empty() {
                warn!(
                    dirs = %self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" "),
                    "no rules are loaded: no event will run anything"
                );
            }
            info!(rules = set.len(), "rule set ready");
            self.set = Arc::new(set);
        }
        changed
    }
}
