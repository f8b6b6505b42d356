//! `hark relay`: flags over `hark.yaml`, then run the relay until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
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
    /// Serve the HTTP API on ADDR:PORT (/healthz, /readyz, /v1/events, datagrepper's /raw
    /// and /id) [default: http.listen; off]. HTTPS with --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// PEM certificate chain for the HTTP API [default: http.tls_cert].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: http.tls_key].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Forward every event the relay publishes to an AMQP 0-9-1 broker too (RabbitMQ), in
    /// fedora-messaging's format, so its consumers see the bus: an amqp:// or amqps:// URL
    /// (TLS files from amqp.ca, amqp.cert, amqp.key) [default: off].
    #[arg(long, value_name = "URL")]
    amqp_out: Option<String>,
    /// The exchange --amqp-out publishes to (routing key = topic) [default: amq.topic].
    #[arg(
        long,
        value_name = "EXCHANGE",
        default_value = "amq.topic",
        requires = "amqp_out"
    )]
    amqp_out_exchange: String,
}

pub fn run(args: RelayArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(format!("{e:#}"), super::exit_code_of(&e)),
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
    if args.http.is_some() {
        config.http.listen = args.http;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.http.tls_cert = Some(cert);
        config.http.tls_key = Some(key);
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
    let mut opts = RelayOptions::new(&config.relay, &config.trust, &config.zmq, policy, key);
    let metrics = Registry::default();
    if let Some(url) = args.amqp_out {
        let mut amqp = config.amqp.clone();
        amqp.url = Some(url);
        opts.amqp_out = Some(crate::bus::amqp_out::AmqpOut::spawn(
            &amqp,
            args.amqp_out_exchange,
            "relay",
            metrics.clone(),
        )?);
    }
    let _serving = endpoint.map(|e| e.spawn(metrics.clone())).transpose()?;
    let ready = Arc::new(AtomicBool::new(false));
    let _http = http_server(&config, &opts, ready.clone(), &metrics)?;
    let result = relay::run(opts, metrics, super::shutdown_flag(), || {
        ready.store(true, Ordering::Relaxed);
        crate::systemd::notify(&[crate::systemd::NotifyState::Ready]);
    });
    ready.store(false, Ordering::Relaxed);
    crate::systemd::notify(&[crate::systemd::NotifyState::Stopping]);
    result
}

/// The HTTP API beside a relay when `http.listen` is set; bound before the relay's sockets,
/// so an unusable address or certificate stops it before it is ready.
pub(crate) fn http_server(
    config: &Config,
    opts: &RelayOptions,
    ready: Arc<AtomicBool>,
    metrics: &Registry,
) -> anyhow::Result<Option<crate::http::HttpServer>> {
    let Some(listen) = config.http.listen.clone() else {
        return Ok(None);
    };
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => anyhow::bail!("http.tls_cert and http.tls_key go together: set both or neither"),
    };
    let h = &config.http;
    let hooks = crate::http::hooks::load(&h.hooks)?;
    for hook in &hooks {
        // Its events go through this relay's trust like any other: say so now, not with
        // a refusal at the first push.
        if opts.policy.keyring().get(&hook.key.name).is_none() {
            anyhow::bail!(
                "http.hooks.{}: its key signs as {:?}, which this relay does not trust: put \
                 its public keyfile in trust.trusted_dir and grant it _hark.hook.{}.** (trust.grants)",
                hook.name,
                hook.key.name,
                hook.name
            );
        }
    }
    let http = crate::http::HttpOptions {
        listen,
        tls,
        journal: opts.journal.clone(),
        relay: opts.name.clone(),
        max_body: h.max_body,
        request_timeout: h.request_timeout,
        rate_limit: h.rate_limit,
        rate_burst: h.rate_burst,
        trusted_proxies: h.trusted_proxies.clone(),
        hooks: Arc::new(hooks),
    };
    crate::http::HttpServer::start(http, Some(opts.context.clone()), ready, metrics.clone())
        .map(Some)
}
