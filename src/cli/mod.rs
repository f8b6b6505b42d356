//! The `hark` command: argument parsing, logging setup, and dispatch to one module per
//! subcommand. Subcommand modules turn flags plus `hark.yaml` into options for the library
//! and map failures to exit codes; they hold no bus or rule logic of their own.

mod amqp;
pub mod assets;
pub(crate) mod history;
mod jobs;
mod keygen;
mod publish;
mod record;
mod relay;
pub mod rules;
mod serve;
mod status;
mod tail;
mod trigger;
mod unit_starter;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for "could not reach the relay in time" (EX_TEMPFAIL: try again later).
pub const EXIT_TEMPFAIL: u8 = 75;
/// Exit code for bad usage or configuration (EX_USAGE is 64; 2 is what clap uses).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "hark",
    version,
    about = "Run commands when distribution infrastructure publishes events",
    long_about = "hark listens to a ZeroMQ event bus (Laniakea Lighthouse and fedmsg compatible), \
matches signed events against YAML rules in rules.d/, and runs commands with the event as JSON \
on stdin. It ships the whole bus: relay, publisher, tail.\n\n\
Quick start:\n  hark keygen --id me --out keys/\n  hark relay --key keys/me.key_secret --trusted keys/ --grant 'me=**'\n  \
hark tail --connect tcp://127.0.0.1:5572\n  hark publish --relay tcp://127.0.0.1:5571 --key keys/me.key_secret _lk.test.hello --data '{\"hi\":1}'"
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `hark=debug` (also HARK_LOG).
    #[arg(long, global = true, env = "HARK_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an Ed25519 key pair in Laniakea's keyfile format.
    Keygen(keygen::KeygenArgs),
    /// Run a relay: accept, verify, countersign and publish events.
    Relay(relay::RelayArgs),
    /// Sign an event and submit it to every relay; exits 0 once one has it, spools it when none answers.
    Publish(publish::PublishArgs),
    /// Print events from one or more relays, verified, as they arrive.
    Tail(tail::TailArgs),
    /// Write events as they arrive to a JSON-lines recording (frames byte for byte).
    Record(record::RecordArgs),
    /// Run the trigger daemon: match events against rules and run commands.
    Trigger(trigger::TriggerArgs),
    /// Relay and trigger daemon in one process, for trying hark out (no config needed).
    Serve(serve::ServeArgs),
    /// Query the relay journal (or a `hark record --db` file): topic, time, signer, where.
    History(history::HistoryArgs),
    /// Check rule files and dry-run them against events.
    Rules(rules::RulesArgs),
    /// List, show, retry and cancel the trigger daemon's jobs.
    Jobs(jobs::JobsArgs),
    /// Each rule's last run and next fallback, the jobs waiting and running, how far the daemon got per relay.
    Status(status::StatusArgs),
    /// Start a run.unit job's systemd unit as root's rule files say (hark-unit-starter.socket runs it).
    UnitStarter(unit_starter::UnitStarterArgs),
    /// Write man pages and shell completions (used when building packages).
    #[command(hide = true, name = "generate-assets")]
    GenerateAssets(assets::AssetsArgs),
}

/// The full clap definition, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn init_logging(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd (stderr is the journal): the native protocol, so that priorities and
    // fields survive: `journalctl -p warning -u hark-trigger`, `journalctl HARK_RULE=hello`.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let journald = journald.with_field_prefix(Some("HARK".into()));
            if tracing_subscriber::registry()
                .with(filter.clone())
                .with(journald)
                .try_init()
                .is_ok()
            {
                return;
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // journald stamps every line itself; a second timestamp is noise.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Relay(_) | Command::Trigger(_) | Command::Serve(_)
    ) {
        quiet_on_closed_pipe();
    }
    init_logging(&cli.log);
    match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Relay(args) => relay::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Record(args) => record::run(args),
        Command::Trigger(args) => trigger::run(args),
        Command::Serve(args) => serve::run(args),
        Command::History(args) => history::run(args),
        Command::Rules(args) => rules::run(args),
        Command::Jobs(args) => jobs::run(args),
        Command::Status(args) => status::run(args),
        Command::UnitStarter(args) => unit_starter::run(args),
        Command::GenerateAssets(args) => assets::run(args),
    }
}

/// `hark jobs | head -1`: end quietly when the reader goes away, as coreutils do, instead
/// of panicking in `println!`. Rust ignores SIGPIPE; the default action ends the process
/// without a word. Only for commands that write to a terminal or pipe: a daemon must
/// survive a job that closes its stdin early.
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called at start-up, before any other thread exists, with the default
    // disposition, which runs no handler code.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!("cannot restore SIGPIPE: {e}");
    }
}

/// Print an error chain the way an admin wants to read it and return `code`.
pub(crate) fn fail(err: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("hark: error: {err}");
    ExitCode::from(code)
}

/// A daemon's exit status for `err`: [`EXIT_USAGE`] when its configuration file is what
/// failed (as the man page says; systemd's log then shows a status that restarting will
/// not fix), 1 otherwise.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<crate::config::FileError>().is_some() {
        EXIT_USAGE
    } else {
        1
    }
}

/// `--srv DOMAIN`: a DNS domain, checked as hark.yaml's `{srv: DOMAIN}` is.
pub(crate) fn parse_domain(text: &str) -> Result<String, String> {
    crate::discovery::check_domain(text).map(|()| text.to_string())
}

/// Register SIGTERM/SIGINT (and SIGHUP where given) to set the returned flag.
pub(crate) fn shutdown_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            tracing::warn!("cannot watch signal {sig}: {e}");
        }
    }
    flag
}

/// `--trusted`, `--grant` and `--allow-unsigned`, shared by every command that admits events.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct TrustArgs {
    /// Directory of trusted public keyfiles [default: /etc/hark/keys/trusted].
    #[arg(long, value_name = "DIR")]
    pub trusted: Option<std::path::PathBuf>,
    /// Allow SIGNER to publish topics matching GLOB (repeatable; `*=**` allows everything).
    #[arg(long, value_name = "SIGNER=GLOB[,GLOB]")]
    pub grant: Vec<String>,
    /// Accept events that carry no trusted signature.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Trust OpenPGP signatures by any key in FILE (a keyring, binary or armored) as
    /// signer NAME (repeatable), e.g. `debian-developer=/usr/share/keyrings/debian-keyring.gpg`.
    #[arg(long, value_name = "NAME=FILE")]
    pub openpgp_keyring: Vec<String>,
    /// Directories trusted beside `--trusted` (not a flag: `hark serve` adds its own key's).
    #[arg(skip)]
    pub also_trusted: Vec<std::path::PathBuf>,
}

impl TrustArgs {
    /// Apply the flags over `config.trust` and build the policy, warning about key files
    /// that cannot be read, an empty keyring, and trusted signers without a grant (except
    /// `own_key`, the process's own signing key).
    pub fn policy(
        &self,
        config: &mut crate::config::Config,
        own_key: Option<&str>,
    ) -> anyhow::Result<crate::admit::TrustPolicy> {
        use tracing::warn;
        if let Some(dir) = &self.trusted {
            if !dir.is_dir() {
                anyhow::bail!("--trusted {}: not a directory", dir.display());
            }
            config.trust.trusted_dir = dir.clone();
        }
        config.trust.allow_unsigned |= self.allow_unsigned;
        for spec in &self.openpgp_keyring {
            let Some((name, file)) = spec
                .split_once('=')
                .filter(|(n, f)| !n.is_empty() && !f.is_empty())
            else {
                anyhow::bail!("--openpgp-keyring {spec:?} must look like NAME=FILE");
            };
            config
                .trust
                .openpgp_keyrings
                .insert(name.to_string(), file.into());
        }
        let grants = self
            .grant
            .iter()
            .map(|g| crate::admit::parse_grant(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let policy =
            crate::admit::TrustPolicy::from_dirs(&config.trust, &grants, &self.also_trusted)
                .map_err(anyhow::Error::msg)?;
        if policy.keyring().is_empty()
            && config.trust.openpgp_keyrings.is_empty()
            && !policy.allow_unsigned()
        {
            warn!(
                "no trusted keys in {} and unsigned events are refused: every signed event will be refused",
                config.trust.trusted_dir.display()
            );
        }
        let granted = |name: &str| {
            grants.iter().any(|(s, _)| s == name || s == "*")
                || config.trust.grants.contains_key(name)
                || config.trust.grants.contains_key("*")
        };
        let openpgp_names = config.trust.openpgp_keyrings.keys().map(String::as_str);
        for name in policy
            .keyring()
            .names()
            .chain(openpgp_names)
            .filter(|n| Some(*n) != own_key)
        {
            if !granted(name) {
                warn!("trusted signer {name:?} has no topic grant; its events will be refused (add --grant '{name}=GLOB')");
            }
        }
        Ok(policy)
    }
}
