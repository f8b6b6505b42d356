//! `hark status`: what `systemctl list-timers` is for timers, for a trigger daemon, read
//! from its rule files and its state file, so it answers whether the daemon runs or not:
//! each rule with its file, when it last ran and how that ended, when its fallback runs
//! next; the jobs pending or running and what they wait for; how far the daemon got in
//! each relay's stream; and the events lost for good.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::jobs::store::{Job, RelayProgress, State, Store};
use crate::jobs::FallbackClock;
use crate::rules::load_dirs;
use crate::sources::replay::Unrecoverable;

use super::jobs::{state_path, when};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hark status              # the packaged daemon (or hark serve's)\n  \
hark status --json | jq '.rules[] | select(.last.state == \"failed\")'\n  \
hark status --rules ./rules.d --state state.db"
)]
pub struct StatusArgs {
    /// Rule directories, vendor first (repeatable) [default: trigger.rules from hark.yaml,
    /// /usr/share/hark/rules.d /etc/hark/rules.d; ./rules.d for hark serve's state].
    #[arg(long, value_name = "DIR")]
    rules: Vec<PathBuf>,
    /// The daemon's state file [default: as for hark jobs].
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Configuration file (for trigger.rules and trigger.state).
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// One JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    state: PathBuf,
    rules: Vec<RuleStatus>,
    /// Rule files that did not load, with why.
    refused: Vec<String>,
    jobs: Vec<LiveJob>,
    relays: Vec<RelayProgress>,
    /// What each source was last heard from, as the running daemon wrote it.
    sources: Vec<crate::admit::health::SourceHealth>,
    /// When the daemon last wrote `sources` (every 5 s while it runs; ms).
    sources_written: Option<i64>,
    lost: Vec<Lost>,
}

#[derive(Debug, Serialize)]
struct RuleStatus {
    name: String,
    /// `file:line` where the rule is written.
    source: String,
    last: Option<LastRun>,
    /// When its fallback schedule runs next (ms), for a rule with one.
    fallback_due: Option<i64>,
}

#[derive(Debug, Serialize)]
struct LastRun {
    job: i64,
    state: &'static str,
    exit_code: Option<i32>,
    started: Option<i64>,
    finished: Option<i64>,
}

#[derive(Debug, Serialize)]
struct LiveJob {
    id: i64,
    rule: String,
    key: String,
    state: &'static str,
    created: i64,
    started: Option<i64>,
    /// Seconds since it started (running) or was filed (pending).
    elapsed_s: u64,
    /// Why a pending job has not started.
    waiting: Option<String>,
}

#[derive(Debug, Serialize)]
struct Lost {
    #[serde(flatten)]
    range: Unrecoverable,
    noticed: i64,
}

pub fn run(args: StatusArgs) -> ExitCode {
    let path = match state_path(args.state.clone(), args.config.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = match Store::open(&path) {
        Ok(s) => s,
        Err(e) => return super::fail(format!("{}: {e}", path.display()), 1),
    };
    let dirs = if !args.rules.is_empty() {
        args.rules.clone()
    } else if path == super::serve::default_state_dir().join("state.db") {
        vec![PathBuf::from("rules.d")]
    } else {
        match crate::config::Config::load(args.config.as_deref()) {
            Ok(c) => c.trigger.rules,
            Err(e) => return super::fail(e, super::EXIT_USAGE),
        }
    };
    match gather(&store, path.clone(), &dirs) {
        Ok(status) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", render(&status, crate::jobs::now_ms()));
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(format!("{}: {e}", path.display()), 1),
    }
}

fn gather(store: &Store, state: PathBuf, dirs: &[PathBuf]) -> rusqlite::Result<Status> {
    let now = crate::jobs::now_ms();
    let load = load_dirs(dirs);
    let clocks: Vec<FallbackClock> = store.fallback_clocks()?;
    let mut rules = Vec::new();
    for rule in load.set.rules() {
        let last = store.last_ended(&rule.name)?.map(|j| LastRun {
            job: j.id,
            state: j.state.as_str(),
            exit_code: j.exit_code,
            started: j.started,
            finished: j.finished,
        });
        let fallback_due = rule.fallback.as_ref().map(|_| {
            clocks
                .iter()
                .find(|c| c.rule == rule.name)
                .map_or(now, FallbackClock::next_due)
        });
        rules.push(RuleStatus {
            name: rule.name.clone(),
            source: format!("{}:{}", rule.source.file.display(), rule.source.line),
            last,
            fallback_due,
        });
    }
    let refused = load.refusals().map(|e| e.to_string()).collect();
    let jobs = store
        .list(&[State::Pending, State::Running], 1000)?
        .iter()
        .map(|j| live(j, now))
        .collect();
    let lost = store
        .lost_events(1000)?
        .into_iter()
        .map(|(range, noticed)| Lost { range, noticed })
        .collect();
    let heard = store.sources()?;
    let sources_written = heard.iter().map(|(_, w)| *w).max();
    Ok(Status {
        state,
        rules,
        refused,
        jobs,
        relays: store.relay_progress()?,
        sources: heard.into_iter().map(|(s, _)| s).collect(),
        sources_written,
        lost,
    })
}

fn live(j: &Job, now: i64) -> LiveJob {
    let since = j.started.unwrap_or(j.created);
    let waiting = (j.state == State::Pending).then(|| {
        if j.due > now {
            let why = if j.attempt > 1 {
                "retry backoff"
            } else {
                "coalesce quiet period"
            };
            format!("{why}, until {}", when(Some(j.due)))
        } else {
            "a free slot (the rule's concurrency limit or its pool)".into()
        }
    });
    LiveJob {
        id: j.id,
        rule: j.rule.clone(),
        key: j.key.clone(),
        state: j.state.as_str(),
        created: j.created,
        started: j.started,
        elapsed_s: u64::try_from(now.saturating_sub(since) / 1000).unwrap_or(0),
        waiting,
    }
}

/// Daemons write the sources' health every 5 s; older than this, it is not running.
const STALE_MS: i64 = 15_000;

/// How long ago `ms` was, for a person: `3s ago`, `2h ago`.
fn ago(ms: Option<i64>, now: i64) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            let secs = u64::try_from(now.saturating_sub(ms) / 1000).unwrap_or(0);
            format!(
                "{} ago",
                crate::duration::format(std::time::Duration::from_secs(secs))
            )
        }
    }
}

/// The sources table: whether the daemon really receives, and from what.
fn sources(s: &Status, now: i64) -> String {
    let mut out = String::new();
    let Some(written) = s.sources_written else {
        out.push_str("sources: not known (no daemon of this version ran on this state file)\n");
        return out;
    };
    if now.saturating_sub(written) > STALE_MS {
        out.push_str(&format!(
            "sources: as the daemon last saw them, {}: it is not running, or stuck\n",
            ago(Some(written), now)
        ));
    }
    if s.sources.is_empty() {
        out.push_str("sources: nothing heard from any source yet (no heartbeat, no event)\n");
        return out;
    }
    out.push_str(&format!(
        "{:<20}  {:<7}  {:<8}  {:<16}  last event
",
        "source", "kind", "state", "last heartbeat"
    ));
    for h in &s.sources {
        let state = match (h.kind.as_str(), h.silent) {
            ("relay", true) => "silent",
            ("relay", false) if h.last_heartbeat.is_some() => "up",
            _ => "-",
        };
        let beat = if h.kind == "relay" {
            ago(h.last_heartbeat, now)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<20}  {:<7}  {:<8}  {:<16}  {}\n",
            h.name,
            h.kind,
            state,
            beat,
            ago(h.last_event, now)
        ));
    }
    out
}

fn render(s: &Status, now: i64) -> String {
    let mut out = format!("state: {}\n\n", s.state.display());
    out.push_str(&format!(
        "{:<20}  {:<10}  {:>4}  {:<19}  {:<19}  source\n",
        "rule", "last", "exit", "last ended", "fallback due"
    ));
    for r in &s.rules {
        let (state, exit, ended) = match &r.last {
            Some(l) => (
                l.state,
                l.exit_code.map_or("-".into(), |c| c.to_string()),
                when(l.finished),
            ),
            None => ("never", "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<20}  {:<10}  {:>4}  {:<19}  {:<19}  {}\n",
            r.name,
            state,
            exit,
            ended,
            r.fallback_due.map_or("-".into(), |d| if d <= now {
                "now".into()
            } else {
                when(Some(d))
            }),
            r.source
        ));
    }
    if s.rules.is_empty() {
        out.push_str("(no rules loaded from these directories)\n");
    }
    for refused in &s.refused {
        out.push_str(&format!("refused: {}\n", refused.trim_end()));
    }
    out.push('\n');
    if s.jobs.is_empty() {
        out.push_str("no job pending or running\n");
    } else {
        out.push_str(&format!(
            "{:>6}  {:<8}  {:<20}  {:<16}  {:>8}  waiting for\n",
            "job", "state", "rule", "key", "elapsed"
        ));
        for j in &s.jobs {
            out.push_str(&format!(
                "{:>6}  {:<8}  {:<20}  {:<16}  {:>7}s  {}\n",
                j.id,
                j.state,
                j.rule,
                j.key,
                j.elapsed_s,
                j.waiting.as_deref().unwrap_or("-")
            ));
        }
    }
    out.push('\n');
    if s.relays.is_empty() {
        out.push_str("no event from a relay stored yet\n");
    } else {
        out.push_str(&format!(
            "{:<20}  {:<36}  {:>10}  last event stored\n",
            "relay", "epoch", "seq"
        ));
        for r in &s.relays {
            out.push_str(&format!(
                "{:<20}  {:<36}  {:>10}  {}\n",
                r.relay,
                r.epoch,
                r.seq,
                if r.updated > 0 {
                    when(Some(r.updated))
                } else {
                    "-".into()
                }
            ));
        }
    }
    out.push('\n');
    out.push_str(&sources(s, now));
    let lost: u64 = s
        .lost
        .iter()
        .map(|l| l.range.last - l.range.first + 1)
        .sum();
    if lost > 0 {
        out.push_str(&format!(
            "\nwarning: {lost} event(s) were missed and could not be fetched again; see hark jobs gaps\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admit::health::SourceHealth;

    fn status(sources: Vec<SourceHealth>, written: Option<i64>) -> Status {
        Status {
            state: PathBuf::from("state.db"),
            rules: Vec::new(),
            refused: Vec::new(),
            jobs: Vec::new(),
            relays: Vec::new(),
            sources,
            sources_written: written,
            lost: Vec::new(),
        }
    }

    fn source(name: &str, kind: &str, beat: Option<i64>, silent: bool) -> SourceHealth {
        SourceHealth {
            name: name.into(),
            kind: kind.into(),
            last_heartbeat: beat,
            last_event: Some(1_000),
            silent,
        }
    }

    #[test]
    fn sources_say_whether_the_daemon_really_receives() {
        let now = 100_000;
        let text = sources(
            &status(
                vec![
                    source("fedora", "amqp", None, false),
                    source("r1", "relay", Some(97_000), false),
                    source("r2", "relay", Some(40_000), true),
                ],
                Some(98_000),
            ),
            now,
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("fedora"), "fedora amqp - - 1m39s ago");
        assert_eq!(line("r1"), "r1 relay up 3s ago 1m39s ago");
        assert_eq!(line("r2"), "r2 relay silent 1m ago 1m39s ago");
        assert!(!text.contains("not running"), "{text}");
        let stale = sources(&status(Vec::new(), Some(now - 60_000)), now);
        assert!(
            stale.contains("1m ago: it is not running, or stuck"),
            "{stale}"
        );
        assert!(
            stale.contains("nothing heard from any source yet"),
            "{stale}"
        );
        let unknown = sources(&status(Vec::new(), None), now);
        assert!(unknown.starts_with("sources: not known"), "{unknown}");
    }
}
