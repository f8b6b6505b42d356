//! The compiled rule, typed for the daemon that runs it: what to match, what to run and how
//! (timeouts, coalescing, concurrency, retries), and rendering a rule against an event into
//! argv/env/workdir or a refusal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::predicate::Condition;
use super::template::{Template, Var};
use crate::event::Event;
use crate::topic::TopicPattern;

/// Timeout when a rule sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Time between SIGTERM and SIGKILL when a rule sets no `grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// The interpreter for `shell: true`.
pub const SHELL: &str = "/bin/sh";

/// Where something was written: file, 1-based line and column (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePos {
    pub file: Arc<Path>,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// What a command receives on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// The event JSON exactly as received.
    Event,
    /// A JSON array of every event merged into this run (coalescing), oldest first.
    Batch,
    /// Nothing (stdin is /dev/null).
    None,
}

impl StdinMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StdinMode::Event => "event",
            StdinMode::Batch => "batch",
            StdinMode::None => "none",
        }
    }
}

/// How to run the command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// argv templates; with `shell`, element 0 is the script and the rest its `$1...`.
    pub command: Vec<Template>,
    pub shell: bool,
    pub env: BTreeMap<String, Template>,
    /// Always absolute (checked at load and again after rendering).
    pub workdir: Option<Template>,
    pub stdin: StdinMode,
    pub timeout: Duration,
    /// After `timeout`, SIGTERM; after `grace` more, SIGKILL.
    pub grace: Duration,
    /// Run as a transient systemd unit with this user, slice and properties.
    pub unit: Option<super::unit::UnitSpec>,
}

/// Debounce: wait until events with the same key have been quiet for `quiet`, but never
/// longer than `max_delay` after the first, then run once.
#[derive(Debug, Clone)]
pub struct Coalesce {
    /// `None`: every event of the rule shares one key.
    pub key: Option<Template>,
    pub quiet: Duration,
    pub max_delay: Option<Duration>,
}

/// The safety net under an event-driven rule: when it has not started a job for `every`,
/// it runs anyway (with `HARK_REASON=fallback`), so the old cron cadence stays a floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub every: Duration,
}

/// The topic of the stand-in event a fallback run renders its command against.
pub const FALLBACK_TOPIC: &str = "_hark.fallback";

/// What happens to a new run when `limit` runs with its key are already going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBusy {
    /// Wait for a slot; runs start in arrival order.
    Queue,
    /// Keep at most one waiting run per key; later events merge into it, so it runs with
    /// the latest event (or all of them, with `stdin: batch`).
    Coalesce,
    /// Do not run for this event; the job is recorded as `skipped`.
    Skip,
    /// Stop the running job of the same key (TERM, grace, KILL; recorded as `superseded`)
    /// and run for the new event instead. For work only the latest event matters to.
    Supersede,
}

/// Concurrency limits. Every rule has one; the default is one run at a time per rule.
#[derive(Debug, Clone)]
pub struct Concurrency {
    /// Runs at once per key (per rule when `key` is `None`).
    pub limit: u32,
    pub key: Option<Template>,
    pub on_busy: OnBusy,
    /// A shared pool whose slots this rule's runs also need.
    pub pool: Option<String>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            limit: 1,
            key: None,
            on_busy: OnBusy::Queue,
            pool: None,
        }
    }
}

/// A named pool of run slots shared across rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub limit: u32,
}

/// Retry policy after a failed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Total attempts, the first included (so 1 means never retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Cap on the doubled delay.
    pub max_backoff: Duration,
    /// Exit codes worth retrying; empty means any failure.
    pub on_exit: Vec<i32>,
    /// Retry runs that hit their timeout.
    pub on_timeout: bool,
}

/// How a run ended, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Exited(i32),
    /// Killed by a signal that was not hark's timeout.
    Signalled,
    TimedOut,
}

impl Retry {
    /// The delay before the next attempt after attempt number `attempt` (1-based) ended
    /// like `end`, or `None` when it should not be retried.
    pub fn next_delay(&self, attempt: u32, end: RunEnd) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let retry = match end {
            RunEnd::Exited(0) => false,
            RunEnd::Exited(code) => self.on_exit.is_empty() || self.on_exit.contains(&code),
            RunEnd::Signalled => self.on_exit.is_empty(),
            RunEnd::TimedOut => self.on_timeout,
        };
        if !retry {
            return None;
        }
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        Some(
            self.backoff
                .checked_mul(factor)
                .unwrap_or(self.max_backoff)
                .min(self.max_backoff),
        )
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    /// Where the rule's `name` was written.
    pub source: SourcePos,
    pub topics: Vec<TopicPattern>,
    /// Precondition on verified signers; `None` when the rule sets no `signed_by`.
    pub signed_by: Option<Vec<String>>,
    /// Everything under `match` except `topic` and `signed_by`.
    pub condition: Condition,
    pub vars: Vec<Var>,
    pub run: RunSpec,
    pub coalesce: Option<Coalesce>,
    pub concurrency: Concurrency,
    pub retry: Option<Retry>,
    pub fallback: Option<Fallback>,
}

/// A rule rendered against one event: ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendered {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    pub stdin: StdinMode,
}

/// Why a rule could not be rendered for an event: the job fails with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {field}: {reason}")]
pub struct RenderError {
    pub rule: String,
    /// What was being rendered: `argv[2]`, `env SUITE`, `workdir`, `coalesce.key`...
    pub field: String,
    pub reason: String,
}

impl Rule {
    /// Does the event carry a verified signature this rule accepts?
    pub fn signature_ok(&self, event: &Event) -> bool {
        match &self.signed_by {
            None => true,
            Some(allowed) => event.signers.iter().any(|s| allowed.contains(s)),
        }
    }

    /// Signers and conditions, without the topic (which the rule set's index decides).
    pub fn accepts(&self, event: &Event) -> bool {
        self.signature_ok(event) && self.condition.holds(event)
    }

    /// Topic, signers and conditions: does this rule fire for the event?
    pub fn matches(&self, event: &Event) -> bool {
        self.topics.iter().any(|t| t.matches(&event.topic)) && self.accepts(event)
    }

    /// `None` when the rule fires, else the first thing that failed.
    pub fn why_not(&self, event: &Event) -> Option<String> {
        if !self.topics.iter().any(|t| t.matches(&event.topic)) {
            let patterns: Vec<&str> = self.topics.iter().map(|t| t.as_str()).collect();
            return Some(format!(
                "topic {:?} does not match {}",
                event.topic,
                patterns.join(" or ")
            ));
        }
        if !self.signature_ok(event) {
            let allowed = self.signed_by.as_deref().unwrap_or_default().join(", ");
            let have = if event.signers.is_empty() {
                "none".to_string()
            } else {
                event.signers.join(", ")
            };
            return Some(format!(
                "signed_by: not signed by any of [{allowed}] (verified signers: {have})"
            ));
        }
        self.condition.why_not(event)
    }

    fn refuse(&self, field: impl Into<String>, reason: String) -> RenderError {
        RenderError {
            rule: self.name.clone(),
            field: field.into(),
            reason,
        }
    }

    /// Render argv, env and workdir for the event, or refuse.
    /// The stand-in event of a fallback run: no data, so only vars with a default and
    /// `${topic}`/`${uuid}` can render (the compiler checks this).
    pub fn fallback_event(&self, uuid: &str) -> Event {
        let mut event = Event::from_value(serde_json::json!({
            "tag": FALLBACK_TOPIC,
            "uuid": uuid,
            "format": "1.0",
            "time": chrono::Utc::now().to_rfc3339(),
            "data": {},
        }))
        .unwrap_or_else(|_| unreachable!("a literal Laniakea envelope parses"));
        event.frames = vec![Vec::new()];
        event
    }

    pub fn render(&self, event: &Event) -> Result<Rendered, RenderError> {
        let mut argv = Vec::new();
        if self.run.shell {
            let script =
                self.run.command.first().ok_or_else(|| {
                    self.refuse("argv", "internal error: empty command".to_string())
                })?;
            argv.push(SHELL.to_string());
            argv.push("-c".to_string());
            argv.push(
                script
                    .render(&self.vars, event)
                    .map_err(|e| self.refuse("script", e))?,
            );
            // $0 of the script, so its own error messages name the rule.
            argv.push(format!("hark:{}", self.name));
            for (i, t) in self.run.command.iter().enumerate().skip(1) {
                t.render_args(&self.vars, event, &mut argv)
                    .map_err(|e| self.refuse(format!("argv[{i}]"), e))?;
            }
        } else {
            for (i, t) in self.run.command.iter().enumerate() {
                t.render_args(&self.vars, event, &mut argv)
                    .map_err(|e| self.refuse(format!("argv[{i}]"), e))?;
            }
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(self.refuse("argv[0]", "the program name is empty".to_string()));
            }
        }
        let mut env = BTreeMap::new();
        for (name, t) in &self.run.env {
            let value = t
                .render(&self.vars, event)
                .map_err(|e| self.refuse(format!("env {name}"), e))?;
            env.insert(name.clone(), value);
        }
        let workdir = match &self.run.workdir {
            None => None,
            Some(t) => {
                let dir = t
                    .render(&self.vars, event)
                    .map_err(|e| self.refuse("workdir", e))?;
                let path = PathBuf::from(&dir);
                if !path.is_absolute() {
                    return Err(self.refuse("workdir", format!("{dir:?} is not absolute")));
                }
                if path.components().any(|c| c == Component::ParentDir) {
                    return Err(self.refuse("workdir", format!("{dir:?} contains '..'")));
                }
                Some(path)
            }
        };
        Ok(Rendered {
            argv,
            env,
            workdir,
            stdin: self.run.stdin,
        })
    }

    /// The coalescing key for the event (the rule name when `key` is not set).
    pub fn coalesce_key(&self, event: &Event) -> Result<Option<String>, RenderError> {
        match &self.coalesce {
            None => Ok(None),
            Some(Coalesce { key: None, .. }) => Ok(Some(self.name.clone())),
            Some(Coalesce { key: Some(t), .. }) => t
                .render(&self.vars, event)
                .map(Some)
                .map_err(|e| self.refuse("coalesce.key", e)),
        }
    }

    /// The concurrency key for the event; `None` when the limit is per rule.
    pub fn concurrency_key(&self, event: &Event) -> Result<Option<String>, RenderError> {
        match &self.concurrency.key {
            None => Ok(None),
            Some(t) => t
                .render(&self.vars, event)
                .map(Some)
                .map_err(|e| self.refuse("concurrency.key", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_and_caps() {
        let r = Retry {
            attempts: 4,
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(90),
            on_exit: vec![75],
            on_timeout: false,
        };
        assert_eq!(
            r.next_delay(1, RunEnd::Exited(75)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            r.next_delay(2, RunEnd::Exited(75)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            r.next_delay(3, RunEnd::Exited(75)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            r.next_delay(4, RunEnd::Exited(75)),
            None,
            "attempts exhausted"
        );
        assert_eq!(
            r.next_delay(1, RunEnd::Exited(1)),
            None,
            "not a listed code"
        );
        assert_eq!(r.next_delay(1, RunEnd::Exited(0)), None);
        assert_eq!(r.next_delay(1, RunEnd::TimedOut), None);
        assert_eq!(r.next_delay(1, RunEnd::Signalled), None);
        let any = Retry {
            on_exit: vec![],
            on_timeout: true,
            ..r
        };
        assert!(any.next_delay(1, RunEnd::Exited(1)).is_some());
        assert!(any.next_delay(1, RunEnd::Signalled).is_some());
        assert!(any.next_delay(1, RunEnd::TimedOut).is_some());
        assert_eq!(any.next_delay(40, RunEnd::TimedOut), None);
    }
}
