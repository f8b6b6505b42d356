//! `hark publish`: sign one event and submit it, exiting 0 only once a relay has it.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::bus::publish::{build_event, submit, PublishError};
use crate::bus::relay::hostname;
use crate::config::Config;
use crate::event::keys::read_signing_key;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The event data (a JSON object) comes from --data, --data-file, or stdin when \
neither is given. The uuid of the published event is printed on stdout.\n\n\
Exit status: 0 published (or already published by an earlier attempt), 1 refused by the relay \
(the reason is printed), 2 bad usage, 75 no relay answered in time (try again later).\n\n\
Example:\n  hark publish --relay tcp://master:5571 --key /etc/hark/keys/secret/archive.key_secret \\\n    \
_lk.archive.master.published --data '{\"repo\": \"master\"}'"
)]
pub struct PublishArgs {
    /// Topic (Laniakea `tag`), e.g. `_lk.archive.package-upload-accepted`.
    tag: String,
    /// The relay's submit endpoint.
    #[arg(long, value_name = "EP", default_value = "tcp://127.0.0.1:5571")]
    relay: String,
    /// Secret keyfile to sign with (Laniakea keyfile or `ed25519 <ver> <seed>` file).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Event data as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the event data from FILE.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// Who caused the event, stored (signed) as `author`.
    #[arg(long)]
    author: Option<String>,
    /// How long to wait for the relay's ack, resending meanwhile.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::duration::parse)]
    timeout: Duration,
    /// Configuration file (for ZeroMQ options).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: PublishArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let (text, source) = match (&args.data, &args.data_file) {
        (Some(d), _) => (d.clone(), "--data".to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => (t, path.display().to_string()),
            Err(e) => {
                return super::fail(
                    format!("cannot read {}: {e}", path.display()),
                    super::EXIT_USAGE,
                )
            }
        },
        (None, None) => {
            let mut t = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut t) {
                return super::fail(
                    format!("cannot read the event data from stdin: {e}"),
                    super::EXIT_USAGE,
                );
            }
            (t, "stdin".to_string())
        }
    };
    let data: Value = match serde_json::from_str(&text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return super::fail(
                format!("event data from {source} must be a JSON object"),
                super::EXIT_USAGE,
            )
        }
        Err(e) => {
            return super::fail(
                format!("event data from {source} is not JSON: {e}"),
                super::EXIT_USAGE,
            )
        }
    };
    let key = match read_signing_key(&args.key) {
        Ok(k) => k,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let author = args.author.or_else(|| std::env::var("USER").ok());
    let event = match build_event(&args.tag, data, &key, Some(&hostname()), author.as_deref()) {
        Ok(e) => e,
        Err(e) => return super::fail(e, 1),
    };
    match submit(&args.relay, &event, args.timeout, &config.zmq) {
        Ok(ack) => {
            println!("{}", ack.uuid.unwrap_or_default());
            if let Some(seq) = ack.seq {
                tracing::info!("published as seq {seq}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ PublishError::Timeout { .. }) => super::fail(e, super::EXIT_TEMPFAIL),
        Err(e) => super::fail(e, 1),
    }
}
