//! `hark trigger`: flags over `hark.yaml`, then run the daemon until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::discovery::RelayList;
use crate::jobs::SchedulerOptions;
use crate::metrics::Registry;
use crate::trigger::{self, TriggerOptions};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Every flag overrides the same setting in hark.yaml (trigger.* and trust.*).\n\n\
Events are admitted with the same trust policy as the relay (signatures, grants, freshness, \
duplicate uuids), matched against the rules, and turned into jobs that are stored in --state \
before they run. SIGHUP (or any change in the rule directories) reloads the rules; a broken \
file keeps its last good version. SIGTERM lets running jobs finish for trigger.shutdown_grace.\n\n\
Example:\n  hark trigger --connect tcp://relay1:5572 --connect tcp://relay2:5572 --metrics 127.0.0.1:9464"
)]
pub struct TriggerArgs {
    /// Configuration file [default: /etc/hark/hark.yaml if present, else built-in defaults].
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Relay PUB endpoint to subscribe to (repeatable) [default: tcp://127.0.0.1:5572].
    #[arg(long, value_name = "EP")]
    pub connect: Vec<String>,
    /// Find the relays in DNS: subscribe to every _hark-publish._tcp.DOMAIN record and fetch
    /// missed events from the _hark-replay._tcp ones, following both as they change
    /// (replaces --connect, --replay and their hark.yaml settings).
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["connect", "replay"], value_parser = super::parse_domain)]
    pub srv: Option<String>,
    /// fedmsg endpoint (hub or gateway) to subscribe to directly (repeatable).
    #[arg(long, value_name = "EP")]
    pub fedmsg: Vec<String>,
    /// A relay's replay endpoint to fetch missed events from (repeatable) [default:
    /// trigger.replay].
    #[arg(long, value_name = "EP")]
    pub replay: Vec<String>,
    /// Rule directory, vendor first (repeatable) [default: /usr/share/hark/rules.d /etc/hark/rules.d].
    #[arg(long, value_name = "DIR")]
    pub rules: Vec<PathBuf>,
    /// SQLite state file [default: /var/lib/hark/state.db].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub trust: super::TrustArgs,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics) [default: trigger.metrics; off].
    /// An address that cannot be bound stops the daemon before it is ready.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub amqp: super::amqp::AmqpArgs,
}

pub fn run(args: TriggerArgs) -> ExitCode {
    let result = options(args).and_then(|opts| {
        trigger::run(
            opts,
            Registry::default(),
            Arc::new(AtomicBool::new(false)),
            || {},
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(format!("{e:#}"), super::exit_code_of(&e)),
    }
}

/// Resolve flags and config into daemon options (shared with `hark serve`).
pub fn options(args: TriggerArgs) -> anyhow::Result<TriggerOptions> {
    let mut config = Config::load(args.config.as_deref())?;
    let amqp_flag = args.amqp.amqp.is_some();
    args.amqp.apply(&mut config.amqp);
    let t = &mut config.trigger;
    if !args.connect.is_empty() {
        t.connect = args.connect.into();
    } else if amqp_flag && t.connect == crate::config::TriggerConfig::default().connect {
        // `--amqp URL` alone means that broker alone, not also the default local relay.
        t.connect = RelayList::default();
    }
    if !args.fedmsg.is_empty() {
        t.fedmsg = args.fedmsg;
    }
    if !args.replay.is_empty() {
        t.replay = args.replay.into();
    }
    if let Some(domain) = args.srv {
        t.connect = RelayList::Srv(domain.clone());
        t.replay = RelayList::Srv(domain);
    }
    if !args.rules.is_empty() {
        t.rules = args.rules;
    }
    if let Some(state) = args.state {
        t.state = state;
    }
    if args.metrics.is_some() {
        t.metrics = args.metrics;
    }
    let results_key = match &t.results_key {
        Some(path) => Some(crate::event::keys::read_signing_key(path)?),
        None => None,
    };
    let policy = args
        .trust
        .policy(&mut config, results_key.as_ref().map(|k| k.name.as_str()))?;
    let t = config.trigger;
    // Rules are compiled against the users this configuration allows for run.unit.
    crate::rules::unit::set_allowed_users(&t.unit_users);
    // Config::load refuses one of results_relay and results_key without the other, at the
    // setting's position, so only both or neither get here.
    let results = t.results_relay.clone().zip(results_key);
    Ok(TriggerOptions {
        connect: t.connect,
        fedmsg: t.fedmsg,
        replay: t.replay,
        nameservers: config.discovery.nameservers,
        rule_dirs: t.rules,
        state: t.state,
        policy,
        allow_fedmsg: config.trust.allow_fedmsg,
        dedupe_window: config.trust.dedupe_window,
        dedupe_capacity: config.trust.dedupe_capacity,
        metrics_addr: t.metrics,
        scheduler: SchedulerOptions {
            config_pools: t.pools,
            log_limit: t.log_limit,
            tail_limit: t.tail_limit,
        },
        shutdown_grace: t.shutdown_grace,
        reload_interval: t.reload_interval,
        zmq: config.zmq,
        results,
        amqp: config.amqp.url.is_some().then_some(config.amqp),
    })
}
