//! `hark record`: write what the bus carries to a JSON-lines recording (docs/formats.md),
//! frames byte for byte, for `hark rules test --events` and for later verification.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::tail::{watch, WatchArgs};
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
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: RecordArgs) -> ExitCode {
    let mut sink: Box<dyn Write> = match &args.out {
        None => Box::new(std::io::stdout()),
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Box::new(f),
            Err(e) => return super::fail(format!("cannot open {}: {e}", path.display()), 1),
        },
    };
    let endpoint = (args.watch.endpoints().len() == 1).then(|| args.watch.endpoints()[0].clone());
    watch(&args.watch, |event, report| {
        let mut record = Record::new(event.frames.clone(), endpoint.clone());
        record.signers = report.verified.clone();
        record.write_to(&mut sink)?;
        sink.flush()
    })
}
