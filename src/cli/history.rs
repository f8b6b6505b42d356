//! `hark history`: query a journal file (the relay's, or one `hark record --db` wrote) by
//! topic, receive time, signer and `where` conditions, page by page (src/history).
//! `--json` prints recording lines (docs/formats.md), so the output feeds
//! `hark rules test --events` as it is.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::history::{self, Found, Query};
use crate::journal::Journal;
use crate::record::Record;
use crate::topic::TopicPattern;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Times are receive times on the relay (or recorder). --start and --end \
take RFC 3339 (2024-05-01T12:00:00Z) or seconds since the epoch.\n\n\
Examples:\n  hark history --topic '_lk.archive.**' --since 2h\n  \
hark history --journal today.db --signer archive-master --where '{data.suite: unstable}' --json > unstable.jsonl\n  \
hark rules test rules.d --events unstable.jsonl"
)]
pub struct HistoryArgs {
    /// The journal or recording database [default: relay.journal from hark.yaml].
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Only topics matching GLOB (repeatable; one is enough): `*` one segment, `**` any number.
    #[arg(long, value_name = "GLOB", value_parser = |s: &str| TopicPattern::parse(s).map_err(|e| e.to_string()))]
    topic: Vec<TopicPattern>,
    /// Only events received within this long before now, e.g. `2h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, conflicts_with = "start")]
    since: Option<Duration>,
    /// Only events received at or after this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    start: Option<i64>,
    /// Only events received at or before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    end: Option<i64>,
    /// Only events signed by NAME (repeatable; one is enough).
    #[arg(long, value_name = "NAME")]
    signer: Vec<String>,
    /// A condition map in the rules' `where` syntax, e.g. `{data.suite: unstable}`.
    #[arg(long = "where", value_name = "YAML")]
    where_: Option<String>,
    /// Only events whose JSON text contains TEXT (repeatable; all must).
    #[arg(long, value_name = "TEXT")]
    contains: Vec<String>,
    /// Newest first (the default is oldest first, as a recording).
    #[arg(long)]
    desc: bool,
    /// Stop after N events; the cursor to go on from is printed to stderr.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Start past this seq (a cursor from a previous answer).
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// Recording lines, frames byte for byte (what `hark rules test --events` reads).
    #[arg(long, conflicts_with = "terse")]
    json: bool,
    /// Seq, topic and uuid only.
    #[arg(long)]
    terse: bool,
    /// Configuration file (for relay.journal).
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// RFC 3339, or seconds since the Unix epoch (datagrepper's form), to milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs.abs() < 1e14 {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("invalid time {text:?}: {e} (give RFC 3339, e.g. 2024-05-01T12:00:00Z, or epoch seconds)")
        })
}

/// Milliseconds since the epoch as RFC 3339 UTC with microseconds (the recording form).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A found event as a recording line, with its seq.
pub fn record_line(found: &Found) -> String {
    let mut record = Record::new(found.entry.frames.clone(), None);
    record.received = rfc3339_ms(found.entry.received_ms);
    record.signers = found.event.signers.clone();
    record.seq = Some(found.entry.seq);
    record.to_line()
}

pub fn run(args: HistoryArgs) -> ExitCode {
    let path = match &args.journal {
        Some(p) => p.clone(),
        None => match Config::load(args.config.as_deref()) {
            Ok(c) => match c.relay.journal {
                Some(p) => p,
                None => {
                    return super::fail(
                        "no journal: give --journal FILE or set relay.journal in hark.yaml",
                        super::EXIT_USAGE,
                    )
                }
            },
            Err(e) => return super::fail(e, super::EXIT_USAGE),
        },
    };
    let condition = match &args.where_ {
        None => None,
        Some(text) => match crate::rules::compile::parse_condition("--where", text) {
            Ok(c) => Some(c),
            Err(e) => return super::fail(e, super::EXIT_USAGE),
        },
    };
    if !path.exists() {
        return super::fail(format!("{}: no such file", path.display()), 1);
    }
    let journal = match Journal::open_read_only(&path) {
        Ok(j) => j,
        Err(e) => return super::fail(format!("{}: {e}", path.display()), 1),
    };
    let from_ms = args
        .since
        .map(|d| chrono::Utc::now().timestamp_millis() - i64::try_from(d.as_millis()).unwrap_or(0))
        .or(args.start);
    let query = Query {
        topics: args.topic.clone(),
        from_ms,
        to_ms: args.end,
        signers: args.signer.clone(),
        contains: args.contains.clone(),
        condition,
        descending: args.desc,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = args.after;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut unreadable = 0usize;
    while left > 0 {
        let want = usize::try_from(left.min(history::MAX_PAGE as u64)).unwrap_or(1);
        let page = match history::page(&journal, &query, after, want) {
            Ok(p) => p,
            Err(e) => return super::fail(format!("{}: {e}", path.display()), 1),
        };
        unreadable += page.unreadable;
        for found in &page.events {
            let line = if args.json {
                record_line(found)
            } else if args.terse {
                format!(
                    "{} {} {}",
                    found.entry.seq, found.entry.topic, found.event.uuid
                )
            } else {
                format!(
                    "{} {} {} signers={} {}",
                    found.entry.seq,
                    rfc3339_ms(found.entry.received_ms),
                    found.entry.topic,
                    found.event.signers.join(","),
                    found.event.data
                )
            };
            if writeln!(out, "{line}").is_err() {
                return ExitCode::SUCCESS;
            }
        }
        left -= page.events.len() as u64;
        match page.next {
            None => break,
            Some(next) => after = Some(next),
        }
        if left == 0 {
            let _ = out.flush();
            eprintln!(
                "hark: more events: go on with --after {next}",
                next = after.unwrap_or(0)
            );
        }
    }
    if unreadable > 0 {
        eprintln!("hark: warning: {unreadable} journal rows are not events and were skipped");
    }
    if out.flush().is_err() {
        return ExitCode::SUCCESS;
    }
    ExitCode::SUCCESS
}
