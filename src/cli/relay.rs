//! `hark relay`: flags over `hark.yaml`, then run the relay until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing::warn;

use crate::bus::relay::{self, RelayOptions};
use crate::config::Config;
use crate::event::keys::read_signing_key;
use crate::metrics::{Endpoint, Registry};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every flag overrides the same setting in hark.yaml (relay.* and trust.*).\n\n\
Each native event is checked in this order: signatures by trusted keys (--trusted), the signer's \
topic grants (--grant), unsigned events (--allow-unsigned), duplicate uuids, freshness of `time`. \
What passes is countersigned with --key, stamped with unsigned.{relay,epoch,seq,received} and \
published as [tag, json]. fedmsg frames on --fedmsg-inbound are forwarded byte for byte.\n\n\
With a journal (--journal, relay.journal) every event is written there, with its seq, before \
it is published and acked; subscribers that missed events fetch them from the replay socket \
(--replay). When the journal cannot be written (disk full), submissions are refused with \
reason journal-unavailable until it can.\n\n\
Example:\n  hark relay --key /etc/hark/keys/secret/relay.key_secret --trusted /etc/hark/keys/trusted \\\n    \
--grant 'archive-master=_lk.archive.**' --fedmsg-inbound tcp://*:9941"
)]
pub struct RelayArgs {
    /// Configuration file [default: /etc/hark/hark.yaml if present, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// ROUTER endpoint for submissions (repeatable) [default: tcp://127.0.0.1:5571].
    #[arg(long, value_name = "EP")]
    submit: Vec<String>,
    /// PUB endpoint to publish on (repeatable) [default: tcp://127.0.0.1:5572].
    #[arg(long, value_name = "EP")]
    publish: Vec<String>,
    /// SUB endpoint to bind for fedmsg active publishers (repeatable).
    #[arg(long, value_name = "EP")]
    fedmsg_inbound: Vec<String>,
    /// The relay's secret keyfile, used to countersign what it publishes.
    #[arg(long, value_name = "SECRETFILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    trust: super::TrustArgs,
    /// Name stamped into unsigned.relay [default: host name].
    #[arg(long)]
    name: Option<String>,
    /// Largest accepted message in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<usize>,
    /// Journal every published event to FILE (SQLite) before publishing it, and answer
    /// replay requests from it [default: relay.journal; the package sets
    /// /var/lib/hark/journal.db].
    #[arg(long, value_name = "FILE", conflicts_with = "no_journal")]
    journal: Option<PathBuf>,
    /// Run without a journal, even if hark.yaml names one: no replay for subscribers.
    #[arg(long)]
    no_journal: bool,
    /// ROUTER endpoint answering replay requests (repeatable) [default: tcp://127.0.0.1:5573].
    #[arg(long, value_name = "EP")]
    replay: Vec<String>,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics) [default: relay.metrics; off].
    /// An address that cannot be bound stops the relay before it is ready.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

pub fn run(args: RelayArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(format!("{e:#}"), 1),
    }
}

fn run_inner(args: RelayArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    let relay_cfg = &mut config.relay;
    if !args.submit.is_empty() {
        relay_cfg.submit = args.submit;
    }
    if !args.publish.is_empty() {
        relay_cfg.publish = args.publish;
    }
    if !args.fedmsg_inbound.is_empty() {
        relay_cfg.fedmsg_inbound = args.fedmsg_inbound;
    }
    relay_cfg.key = args.key.or(relay_cfg.key.take());
    relay_cfg.name = args.name.or(relay_cfg.name.take());
    if let Some(size) = args.max_message_size {
        relay_cfg.max_message_size = size;
    }
    if args.no_journal {
        relay_cfg.journal = None;
    } else if let Some(path) = args.journal {
        relay_cfg.journal = Some(path);
    }
    if !args.replay.is_empty() {
        relay_cfg.replay = args.replay;
    }
    if args.metrics.is_some() {
        relay_cfg.metrics = args.metrics;
    }
    // Bound before the relay's sockets, so an unusable address stops it before it is ready.
    let endpoint = config
        .relay
        .metrics
        .as_deref()
        .map(Endpoint::bind)
        .transpose()?;
    let key = match &config.relay.key {
        Some(path) => Some(read_signing_key(path)?),
        None => {
            warn!("no relay key (--key or relay.key): events are published without the relay's countersignature");
            None
        }
    };
    let policy = args
        .trust
        .policy(&mut config, key.as_ref().map(|k| k.name.as_str()))?;
    let opts = RelayOptions::new(&config.relay, &config.trust, &config.zmq, policy, key);
    let metrics = Registry::default();
    let _serving = endpoint.map(|e| e.spawn(metrics.clone())).transpose()?;
    let result = relay::run(opts, metrics, super::shutdown_flag(), || {
        crate::systemd::notify(&[crate::systemd::NotifyState::Ready]);
    });
    crate::systemd::notify(&[crate::systemd::NotifyState::Stopping]);
    result
}
