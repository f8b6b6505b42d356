//! `hark record`: write what the bus carries to a JSON-lines recording (docs/formats.md),
//! frames byte for byte, for `hark rules test --events` and for later verification.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::tail::{watch, WatchArgs};
use crate::journal::{Journal, Retention};
use crate::record::Record;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each line holds the frames exactly as received, the receive time and the \
signers that verified, so a recording can be dry-run against rules later:\n  \
hark record --connect tcp://master:5572 --out today.jsonl --timeout 1h\n  \
hark rules test rules.d --events today.jsonl"
)]
pub struct RecordArgs {
    #[command(flatten)]
    watch: WatchArgs,
    /// Append to FILE (created if missing) instead of writing to stdout.
    #[arg(long, value_name = "FILE", conflicts_with = "db")]
    out: Option<PathBuf>,
    /// Append to a journal-format SQLite FILE instead (created if missing), which
    /// `hark history --journal FILE` queries; nothing is ever pruned from it.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

pub fn run(args: RecordArgs) -> ExitCode {
    if let Some(path) = &args.db {
        return record_db(&args, path);
    }
    let mut sink: Box<dyn Write> = match &args.out {
        None => Box::new(std::io::stdout()),
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Box::new(f),
            Err(e) => return super::fail(format!("cannot open {}: {e}", path.display()), 1),
        },
    };
    let endpoints = args.watch.endpoints();
    let endpoint = (endpoints.len() == 1).then(|| endpoints[0].clone());
    watch(&args.watch, |event, report| {
        let mut record = Record::new(event.frames.clone(), endpoint.clone());
        record.signers = report.verified.clone();
        record.write_to(&mut sink)?;
        sink.flush()
    })
}

/// `--db`: each event one journal row (frames as received, receive time, topic, uuid),
/// committed before the next is read.
fn record_db(args: &RecordArgs, path: &std::path::Path) -> ExitCode {
    let keep_all = Retention {
        max_age: std::time::Duration::MAX,
        max_bytes: u64::MAX,
    };
    let mut journal = match Journal::open(path, keep_all) {
        Ok(j) => j,
        Err(e) => return super::fail(format!("{}: {e}", path.display()), 1),
    };
    watch(&args.watch, |event, _report| {
        let received_ms = chrono::Utc::now().timestamp_millis();
        journal
            .append(&event.frames, &event.topic, &event.uuid, received_ms)
            .map(|_| ())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    })
}
