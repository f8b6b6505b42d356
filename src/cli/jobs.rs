//! `hark jobs`: list, show, retry and cancel jobs in the trigger daemon's state file. Works
//! whether the daemon runs or not: it edits the SQLite file, and a running daemon picks the
//! change up within a second. `hark jobs fallbacks` shows when each rule's safety-net
//! schedule runs next.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{Local, TimeZone};

use crate::jobs::store::{Job, Selection, State, Store};

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  hark jobs                      # the 30 newest jobs\n  \
hark jobs list --state-is failed  # what needs attention\n  \
hark jobs --rule mirror-sync --since 2h --limit 5\n  hark jobs show 42               # argv, events, exit code, output tail\n  \
hark jobs log -f 42             # its output as it runs, until it ends\n  \
hark jobs retry 42              # run it again (a new job with the same events)\n  hark jobs cancel 43             # stop it (TERM, grace, KILL) or drop it if pending\n  \
hark jobs fallbacks             # when each rule's fallback runs next"
)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: Option<JobsCommand>,
    /// Without a command: list, with these filters.
    #[command(flatten)]
    list: ListArgs,
    /// The daemon's state file [default: trigger.state from hark.yaml, /var/lib/hark/state.db;
    /// if that does not exist, the one `hark serve` keeps for this user].
    #[arg(long, global = true, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Configuration file (for trigger.state).
    #[arg(long, global = true, env = "HARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// List jobs, newest first.
    List(ListArgs),
    /// Everything about one job.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// A job's output: while it runs, what it printed so far (with --follow, as it comes,
    /// until the job ends); once it ended, the tail the state file keeps. Every line is
    /// also in the daemon's log (`journalctl -u hark-trigger HARK_JOB=ID`).
    Log {
        id: i64,
        /// Keep printing as the job writes, until it ends (waits for a pending job to start).
        #[arg(long, short)]
        follow: bool,
    },
    /// Run a finished job again, with the same events.
    Retry { id: i64 },
    /// Cancel a pending job, or stop a running one.
    Cancel { id: i64 },
    /// Rules with a fallback schedule: their last start and when the fallback runs next.
    Fallbacks {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Events the daemon missed and no relay could deliver again (past the journal's
    /// retention, or a relay that started a new journal): relay, epoch, seq range, why.
    Gaps {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct ListArgs {
    /// Only jobs in these states (repeatable): pending, running, succeeded, failed, timed_out, skipped, superseded, cancelled.
    #[arg(long = "state-is", value_name = "STATE", value_parser = parse_state)]
    states: Vec<State>,
    /// Only jobs of this rule (repeatable).
    #[arg(long, value_name = "RULE")]
    rule: Vec<String>,
    /// Only jobs created within this long (`2h`, `3d`) or since this local time
    /// (`2026-12-01`, `2026-12-01 09:30`).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    since: Option<i64>,
    /// At most this many.
    #[arg(long, default_value_t = 30)]
    limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// `--since`: a duration back from now, or a local date and time; milliseconds.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(d) = crate::duration::parse(s) {
        let back = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(crate::jobs::now_ms().saturating_sub(back));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    if let Some(t) = naive.and_then(|n| Local.from_local_datetime(&n).earliest()) {
        return Ok(t.timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!("{s:?} is neither a duration (2h, 3d) nor a date and time (2026-12-01 09:30)")
        })
}

fn parse_state(s: &str) -> Result<State, String> {
    State::parse(s).ok_or_else(|| format!("unknown state {s:?}"))
}

pub(super) fn when(ms: Option<i64>) -> String {
    ms.and_then(|ms| Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The daemon's state file: `--state`, else `trigger.state` of the configuration, else,
/// when that does not exist, the one `hark serve` keeps for this user. An error names
/// where it looked.
pub(super) fn state_path(
    state: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> Result<PathBuf, ExitCode> {
    let path = match state {
        Some(p) => p,
        None => match crate::config::Config::load(config) {
            Ok(c) if !c.trigger.state.exists() => {
                // No system daemon here: the one `hark serve` runs for this user, if any.
                let serve = super::serve::default_state_dir().join("state.db");
                if serve.exists() {
                    serve
                } else {
                    c.trigger.state
                }
            }
            Ok(c) => c.trigger.state,
            Err(e) => return Err(super::fail(e, super::EXIT_USAGE)),
        },
    };
    if !path.exists() {
        return Err(super::fail(
            format!(
                "no state file at {} (has `hark trigger` run with this --state? `hark serve` keeps its own in {})",
                path.display(),
                super::serve::default_state_dir().display()
            ),
            1,
        ));
    }
    Ok(path)
}

pub fn run(args: JobsArgs) -> ExitCode {
    let path = match state_path(args.state, args.config.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut store = match Store::open(&path) {
        Ok(s) => s,
        Err(e) => return super::fail(format!("{}: {e}", path.display()), 1),
    };
    let command = args.command.unwrap_or(JobsCommand::List(args.list));
    let result = match command {
        JobsCommand::List(list) => {
            let json = list.json;
            let selection = Selection {
                states: list.states,
                rules: list.rule,
                since_ms: list.since,
                limit: list.limit,
            };
            store.select(&selection).map(|jobs| {
            if !json {
                println!("{:>6}  {:<10}  {:<20}  {:<16}  {:<19}  {:>4}  topic / uuid", "id", "state", "rule", "key", "created", "exit");
            }
            for job in jobs {
                if json {
                    println!("{}", serde_json::to_string(&job).unwrap_or_default());
                } else {
                    println!("{}", list_line(&job));
                }
            }
            if let Ok(lost) = store.lost_events(1000) {
                let events: u64 = lost.iter().map(|(r, _)| r.last - r.first + 1).sum();
                if events > 0 && !json {
                    eprintln!("warning: {events} event(s) were missed and could not be fetched again; see hark jobs gaps");
                }
            }
            ExitCode::SUCCESS
            })
        }
        JobsCommand::Show { id, json } => store.get(id).map(|job| match job {
            None => super::fail(format!("no job {id}"), 1),
            Some(job) if json => {
                println!("{}", serde_json::to_string_pretty(&job).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Some(job) => {
                print!("{}", show(&job));
                ExitCode::SUCCESS
            }
        }),
        JobsCommand::Log { id, follow } => log(&store, &path, id, follow),
        JobsCommand::Retry { id } => store.retry(id).map(|new| match new {
            None => super::fail(format!("no job {id}"), 1),
            Some(new) => {
                println!("job {id} will run again as job {new}");
                ExitCode::SUCCESS
            }
        }),
        JobsCommand::Cancel { id } => store.request_cancel(id).map(|state| match state {
            None => super::fail(format!("no job {id}"), 1),
            Some(State::Pending) => {
                println!("job {id} cancelled before it started");
                ExitCode::SUCCESS
            }
            Some(State::Running) => {
                println!("job {id} is running; the daemon will stop it (TERM, then KILL after its grace period)");
                ExitCode::SUCCESS
            }
            Some(other) => super::fail(format!("job {id} already ended ({})", other.as_str()), 1),
        }),
        JobsCommand::Gaps { json } => store.lost_events(1000).map(|lost| {
            if !json {
                println!("{:<19}  {:<16}  {:<36}  {:>21}  why", "noticed", "relay", "epoch", "seqs");
            }
            for (range, noticed) in lost {
                if json {
                    let mut v = serde_json::to_value(&range).unwrap_or_default();
                    v["noticed"] = noticed.into();
                    println!("{v}");
                } else {
                    println!(
                        "{:<19}  {:<16}  {:<36}  {:>21}  {}",
                        when(Some(noticed)),
                        range.relay,
                        range.epoch,
                        format!("{}..={}", range.first, range.last),
                        range.why
                    );
                }
            }
            ExitCode::SUCCESS
        }),
        JobsCommand::Fallbacks { json } => store.fallback_clocks().map(|clocks| {
            print!("{}", fallbacks(&clocks, crate::jobs::now_ms(), json));
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| super::fail(format!("{}: {e}", path.display()), 1))
}

/// `hark jobs log`: the live file while the job runs, the stored tail after. The status
/// lines go to stderr, so stdout is the job's output alone.
fn log(
    store: &Store,
    state: &std::path::Path,
    id: i64,
    follow: bool,
) -> rusqlite::Result<ExitCode> {
    use std::io::{Read as _, Write as _};
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);
    let live = crate::jobs::live::path(&crate::jobs::live::dir(state), id);
    let mut stdout = std::io::stdout().lock();
    let mut waited = false;
    let mut file: Option<std::fs::File> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some(job) = store.get(id)? else {
            return Ok(super::fail(format!("no job {id}"), 1));
        };
        // What the live file holds now; a reader that opened it reads on after removal.
        if job.state == State::Running && file.is_none() {
            file = std::fs::File::open(&live).ok();
        }
        if let Some(f) = &mut file {
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout
                            .write_all(&buf[..n])
                            .and_then(|()| stdout.flush())
                            .is_err()
                        {
                            return Ok(ExitCode::SUCCESS); // the reader went away
                        }
                    }
                }
            }
        }
        match job.state {
            State::Pending | State::Running if follow => {
                if job.state == State::Pending && !waited {
                    eprintln!("job {id} has not started yet; waiting for it");
                    waited = true;
                }
                std::thread::sleep(POLL);
            }
            State::Pending => {
                eprintln!("job {id} has not started yet (--follow waits for it)");
                return Ok(ExitCode::SUCCESS);
            }
            State::Running => {
                if file.is_none() {
                    // The live file comes with the first line (a unit's output too: the
                    // daemon reads it through the pipes it handed the unit).
                    eprintln!("job {id} is running and has printed nothing yet");
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ => {
                if file.is_none() {
                    let tail = job.output_tail.as_deref().unwrap_or("");
                    if stdout.write_all(tail.as_bytes()).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    eprintln!("(the tail the state file keeps; every line is in the daemon's log: journalctl -u hark-trigger HARK_JOB={id})");
                }
                let exit = job
                    .exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default();
                eprintln!("job {id} {}{exit}", job.state.as_str());
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn list_line(job: &Job) -> String {
    let ev = job
        .events
        .first()
        .map(|e| format!("{} {}", e.topic, e.uuid))
        .unwrap_or_default();
    format!(
        "{:>6}  {:<10}  {:<20}  {:<16}  {:<19}  {:>4}  {ev}",
        job.id,
        job.state.as_str(),
        job.rule,
        job.key,
        when(Some(job.created)),
        job.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
    )
}

fn show(job: &Job) -> String {
    let mut out = format!(
        "job {}\n  rule:     {}\n  key:      {}\n  state:    {}\n  attempt:  {}\n  created:  {}\n  started:  {}\n  finished: {}\n  exit:     {}\n",
        job.id,
        job.rule,
        job.key,
        job.state.as_str(),
        job.attempt,
        when(Some(job.created)),
        when(job.started),
        when(job.finished),
        job.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
    );
    if !job.argv.is_empty() {
        out.push_str(&format!(
            "  argv:     {}\n",
            serde_json::to_string(&job.argv).unwrap_or_default()
        ));
    }
    if let Some(unit) = &job.unit {
        out.push_str(&format!(
            "  unit:     {unit} (systemd; journalctl -u {unit})\n"
        ));
    }
    if let Some(err) = &job.error {
        out.push_str(&format!("  error:    {err}\n"));
    }
    out.push_str(&format!("  events ({}):\n", job.events.len()));
    for e in &job.events {
        let signers = if e.signers.is_empty() {
            "unsigned".to_string()
        } else {
            e.signers.join(", ")
        };
        out.push_str(&format!("    {} {} [{signers}]\n", e.topic, e.uuid));
    }
    if let Some(tail) = job.output_tail.as_deref().filter(|t| !t.is_empty()) {
        out.push_str("  output (tail):\n");
        for line in tail.lines() {
            out.push_str(&format!("    | {line}\n"));
        }
    }
    out
}

/// The `hark jobs fallbacks` table (or JSON lines), as of `now_ms`. The daemon writes a
/// clock when it first sees a rule with a fallback and at every start of that rule.
pub(super) fn fallbacks(clocks: &[crate::jobs::FallbackClock], now_ms: i64, json: bool) -> String {
    let mut out = String::new();
    if json {
        for c in clocks {
            let line = serde_json::json!({
                "rule": c.rule,
                "every_ms": c.every,
                "last": c.last,
                "next_due": c.next_due(),
            });
            out.push_str(&format!("{line}\n"));
        }
        return out;
    }
    if clocks.is_empty() {
        out.push_str(
            "no fallback clocks yet (no rule with `fallback` has been loaded by `hark trigger`)\n",
        );
        return out;
    }
    out.push_str(&format!(
        "{:<20}  {:<8}  {:<19}  next due\n",
        "rule", "every", "last start"
    ));
    for c in clocks {
        let due = c.next_due();
        let every = crate::duration::format(std::time::Duration::from_millis(
            u64::try_from(c.every).unwrap_or(0),
        ));
        let wait = u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0);
        let when_due = if wait == 0 {
            "now (runs once no job of the rule is pending or running)".to_string()
        } else {
            // Whole seconds: the next due time, not a stopwatch.
            let left = std::time::Duration::from_secs(wait.div_ceil(1000));
            format!("{} (in {})", when(Some(due)), crate::duration::format(left))
        };
        out.push_str(&format!(
            "{:<20}  {:<8}  {:<19}  {when_due}\n",
            c.rule,
            every,
            when(Some(c.last)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::FallbackClock;

    #[test]
    fn fallbacks_show_the_interval_and_when_each_runs_next() {
        let clocks = [
            FallbackClock {
                rule: "sync".into(),
                last: 0,
                every: 6 * 3600 * 1000,
            },
            FallbackClock {
                rule: "late".into(),
                last: 0,
                every: 1000,
            },
        ];
        let text = fallbacks(&clocks, 3600 * 1000, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("rule"), "{text}");
        assert!(
            lines[1].starts_with("sync") && lines[1].contains("6h"),
            "{text}"
        );
        assert!(lines[1].ends_with("(in 5h)"), "{text}");
        assert!(lines[2].contains("now"), "overdue: {text}");
        let json = fallbacks(&clocks, 0, true);
        let first: serde_json::Value =
            serde_json::from_str(json.lines().next().unwrap_or_default()).unwrap();
        assert_eq!(first["next_due"], 6 * 3600 * 1000);
        assert!(fallbacks(&[], 0, false).contains("no fallback"));
    }
}
