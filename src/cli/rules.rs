//! `hark rules check|test`: arguments and printing. The work is done by
//! [`crate::rules::check`], events are read with [`crate::record`]; [`check_command`] and
//! [`test_command`] take the parsed arguments and writers so they can be tested without a
//! process.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::event::Event;
use crate::record;
use crate::rules::check::{check, default_dirs, evaluate, format_report, NO_SUCH_DIRECTORY};
use crate::rules::load::load_dirs;
use crate::rules::Severity;

#[derive(Debug, clap::Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Parse and compile rule files, lint them, and run their inline tests.
    Check(CheckArgs),
    /// Show which rules fire for events, with the rendered commands.
    Test(TestArgs),
    /// The rules the daemon would load: name, file and line, topics, and what runs.
    List(ListArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Rule directories or files (same default as `check`).
    pub dirs: Vec<PathBuf>,
    /// One JSON object per rule and line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Rule directories or files (default: ./rules.d if it exists, else
    /// /usr/share/hark/rules.d then /etc/hark/rules.d).
    pub dirs: Vec<PathBuf>,
    /// hark.yaml whose trigger.unit_users the rules are checked against [default:
    /// /etc/hark/hark.yaml when it exists].
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not check this host: by default each rule's program (`command[0]`, found on the
    /// rule's or this PATH as the daemon would) must exist and be executable, and its
    /// `workdir` must exist. Use it for rules written here and deployed elsewhere.
    #[arg(long)]
    pub no_preflight: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["event", "events"])))]
pub struct TestArgs {
    /// Rule directories or files (same default as `check`).
    pub dirs: Vec<PathBuf>,
    /// One JSON event: Laniakea (tag/topic, data, optional uuid/time/signers), fedmsg, or a
    /// recording line. `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub event: Option<PathBuf>,
    /// JSON lines: a `hark record` recording, or one event per line. `-` reads stdin.
    #[arg(long, value_name = "FILE.jsonl")]
    pub events: Option<PathBuf>,
    /// Print one JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Treat the events as carrying a verified signature by NAME (repeatable).
    #[arg(long = "signer", value_name = "NAME")]
    pub signers: Vec<String>,
    /// hark.yaml whose trigger.unit_users the rules are loaded with (as `check`).
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: RulesArgs) -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = match args.command {
        RulesCommand::Check(a) => check_command(&a, &mut stdout.lock()),
        RulesCommand::Test(a) => test_command(&a, &mut stdout.lock(), &mut stderr.lock()),
        RulesCommand::List(a) => list_command(&a, &mut stdout.lock(), &mut stderr.lock()),
    };
    ExitCode::from(code)
}

/// The daemon compiles rules against hark.yaml's trigger.unit_users; so do check and test.
fn use_unit_users(config: Option<&std::path::Path>, err: &mut dyn Write) -> bool {
    match crate::config::Config::load(config) {
        Ok(c) => {
            crate::rules::unit::set_allowed_users(&c.trigger.unit_users);
            true
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            false
        }
    }
}

fn dirs_or_default(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if dirs.is_empty() {
        default_dirs()
    } else {
        dirs.to_vec()
    }
}

/// `hark rules list`: one line per loaded rule; refused files go to `err` (exit 1).
pub fn list_command(args: &ListArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let load = load_dirs(&dirs_or_default(&args.dirs));
    let mut failed = false;
    for refusal in load.refusals() {
        let _ = writeln!(err, "{}", refusal.to_string().trim_end());
        failed = true;
    }
    if !args.json {
        let _ = writeln!(
            out,
            "{:<20}  {:<36}  {:<32}  command",
            "rule", "source", "topics"
        );
    }
    for rule in load.set.rules() {
        let source = format!("{}:{}", rule.source.file.display(), rule.source.line);
        let topics: Vec<&str> = rule.topics.iter().map(|t| t.as_str()).collect();
        let command: Vec<&str> = rule.run.command.iter().map(|t| t.source()).collect();
        if args.json {
            let line = serde_json::json!({
                "name": rule.name,
                "source": source,
                "topics": topics,
                "command": command,
                "fallback_every_ms": rule.fallback.as_ref().map(|f| f.every.as_millis() as u64),
            });
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(
                out,
                "{:<20}  {:<36}  {:<32}  {}",
                rule.name,
                source,
                topics.join(" "),
                command.join(" ")
            );
        }
    }
    u8::from(failed)
}

/// `hark rules check`: a line per problem, then a summary. Returns the exit status.
pub fn check_command(args: &CheckArgs, out: &mut dyn Write) -> u8 {
    if !use_unit_users(args.config.as_deref(), out) {
        return 2;
    }
    let dirs = dirs_or_default(&args.dirs);
    let mut report = check(&dirs);
    if !args.no_preflight {
        report.preflight();
    }
    // A path named on the command line that is not there is an error, not a warning.
    for d in report.diagnostics.iter_mut() {
        if d.message == NO_SUCH_DIRECTORY && args.dirs.iter().any(|a| *a.as_path() == *d.pos.file) {
            d.severity = Severity::Error;
            d.message = "no such file or directory".into();
        }
    }
    for d in &report.diagnostics {
        let _ = writeln!(out, "{d}");
    }
    let _ = writeln!(out, "{}", report.summary());
    if report.ok() {
        0
    } else {
        1
    }
}

/// `hark rules test`: a report per event. Returns the exit status: 1 when a rule file was
/// refused or an event could not be read, else 0.
pub fn test_command(args: &TestArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if !use_unit_users(args.config.as_deref(), err) {
        return 2;
    }
    let dirs = dirs_or_default(&args.dirs);
    let load = load_dirs(&dirs);
    let mut failed = false;
    for refusal in load.refusals() {
        let _ = writeln!(err, "{refusal}");
        failed = true;
    }
    let events: Vec<(String, Result<Event, String>)> = match (&args.event, &args.events) {
        (Some(path), _) => {
            let label = path.display().to_string();
            let event = read_input(path).and_then(|text| {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
                record::entry_from_value(value)?.into_event()
            });
            vec![(label, event)]
        }
        (None, Some(path)) => {
            let label = path.display().to_string();
            match open_input(path) {
                Ok(reader) => record::read_events(reader)
                    .map(|(line, ev)| (format!("{label}:{line}"), ev))
                    .collect(),
                Err(e) => vec![(label, Err(e))],
            }
        }
        (None, None) => vec![(
            "(no input)".into(),
            Err("give --event FILE or --events FILE".into()),
        )],
    };
    for (label, event) in events {
        let mut event = match event {
            Ok(e) => e,
            Err(e) => {
                let _ = writeln!(err, "{label}: error: {e}");
                failed = true;
                continue;
            }
        };
        for s in &args.signers {
            if !event.signers.contains(s) {
                event.signers.push(s.clone());
            }
        }
        let report = evaluate(&load.set, &event);
        if args.json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&report).unwrap_or_default()
            );
        } else {
            let stdin = String::from_utf8_lossy(&event.json_bytes()).into_owned();
            let _ = write!(out, "{}", format_report(&report, &stdin));
        }
    }
    u8::from(failed)
}

fn read_input(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

fn open_input(path: &PathBuf) -> Result<Box<dyn std::io::BufRead>, String> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(BufReader::new(f)) as Box<dyn std::io::BufRead>)
        .map_err(|e| format!("cannot open: {e}"))
}
