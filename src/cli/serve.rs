//! `hark serve`: a relay and a trigger daemon in one process, with no configuration at all.
//! The newcomer's entry point: loopback endpoints, `./rules.d`, state and a generated key
//! under `$XDG_STATE_HOME/hark`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use crate::bus::relay::{self, RelayOptions};
use crate::config::Config;
use crate::event::keys::{read_signing_key, write_keypair, KeyMetadata, SigningKey};
use crate::metrics::Registry;

const KEY_ID: &str = "hark-serve";
/// Where serve's HTTP API listens unless told otherwise.
const DEFAULT_HTTP: &str = "127.0.0.1:5574";

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Everything lives on loopback and under the state directory; nothing else is \
read or written. For production, run `hark relay` and `hark trigger` as the packaged systemd units.\n\n\
To try rules that say signed_by, give the publishers' public keys and their grants, for example:\n  \
hark serve --trusted keys/trusted --grant 'archive=_lk.archive.**'"
)]
pub struct ServeArgs {
    /// Rule directory.
    #[arg(long, value_name = "DIR", default_value = "rules.d")]
    rules: PathBuf,
    /// State directory: job store, relay journal and the generated key [default: $XDG_STATE_HOME/hark or ~/.local/state/hark].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Submit endpoint of the embedded relay.
    #[arg(long, value_name = "EP", default_value = "tcp://127.0.0.1:5571")]
    submit: String,
    /// Publish endpoint of the embedded relay.
    #[arg(long, value_name = "EP", default_value = "tcp://127.0.0.1:5572")]
    publish: String,
    /// Replay endpoint of the embedded relay (answers from its journal).
    #[arg(long, value_name = "EP", default_value = "tcp://127.0.0.1:5573")]
    replay: String,
    /// Serve Prometheus metrics of the relay and the trigger daemon on ADDR:PORT (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// HTTP API of the embedded relay (history, datagrepper's /raw and /id); "off" for none
    /// [default: 127.0.0.1:5574, skipped with a warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Trust and grants for other publishers, as `hark relay` and `hark trigger` take them
    /// (serve's own key is always trusted, with every topic granted).
    #[command(flatten)]
    trust: super::TrustArgs,
}

pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("hark");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/hark"),
        None => PathBuf::from(".hark-state"),
    }
}

/// The serve key: generated once, trusted by the embedded relay and daemon.
fn ensure_key(state: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let keys = state.join("keys");
    let trusted = keys.join("trusted");
    std::fs::create_dir_all(&trusted).with_context(|| format!("creating {}", trusted.display()))?;
    let secret = keys.join(format!("{KEY_ID}.key_secret"));
    if !secret.exists() {
        let key = SigningKey::generate(KEY_ID);
        write_keypair(
            &keys,
            &KeyMetadata {
                id: KEY_ID.into(),
                ..Default::default()
            },
            &key,
        )?;
    }
    let public = trusted.join(format!("{KEY_ID}.key"));
    if !public.exists() {
        std::fs::copy(keys.join(format!("{KEY_ID}.key")), &public)
            .with_context(|| format!("writing {}", public.display()))?;
    }
    Ok((secret, trusted))
}

/// How to run this binary from another terminal: `hark` when that is what PATH finds,
/// else its full path (after `cargo run -- serve` there is no `hark` on PATH).
fn this_program() -> String {
    let me = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("hark"))
            .find(|candidate| candidate.is_file())
    });
    match (me, on_path) {
        (Some(me), Some(found))
            if std::fs::canonicalize(&found).ok() == std::fs::canonicalize(&me).ok() =>
        {
            "hark".into()
        }
        (Some(me), _) => me.display().to_string(),
        (None, _) => "hark".into(),
    }
}

pub fn run(args: ServeArgs) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(format!("{e:#}"), 1),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state = args.state_dir.unwrap_or_else(default_state_dir);
    let (secret, trusted) = ensure_key(&state)?;
    let key = read_signing_key(&secret)?;
    let mut config = Config::default();
    config.relay.submit = vec![args.submit.clone()];
    config.relay.publish = vec![args.publish.clone()];
    config.relay.name = Some(format!("{}-serve", relay::hostname()));
    config.relay.journal = Some(state.join("journal.db"));
    config.relay.replay = vec![args.replay.clone()];
    let mut trust = args.trust.clone();
    // The serve key publishes anything; the admin's keys come beside it, never instead.
    trust.grant.push(format!("{KEY_ID}=**"));
    match &trust.trusted {
        Some(_) => trust.also_trusted.push(trusted.clone()),
        None => trust.trusted = Some(trusted.clone()),
    }
    let policy = trust.policy(&mut config, Some(KEY_ID))?;
    let metrics = Registry::default();

    let relay_opts = RelayOptions::new(
        &config.relay,
        &config.trust,
        &config.zmq,
        policy.clone(),
        Some(key),
    );
    let http_ready = Arc::new(AtomicBool::new(false));
    let _http = match args.http.as_deref() {
        Some("off") => None,
        Some(addr) => {
            config.http.listen = Some(addr.to_string());
            super::relay::http_server(&config, &relay_opts, http_ready.clone(), &metrics)?
        }
        // The default port may be another serve's: a newcomer's second terminal, or tests
        // running side by side. Only an address asked for is worth stopping over.
        None => {
            config.http.listen = Some(DEFAULT_HTTP.to_string());
            super::relay::http_server(&config, &relay_opts, http_ready.clone(), &metrics)
                .unwrap_or_else(|e| {
                    config.http.listen = None;
                    tracing::warn!("no HTTP API: {e:#}");
                    None
                })
        }
    };
    let relay_stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let relay_thread = {
        let (stop, metrics) = (relay_stop.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                relay::run(relay_opts, metrics, stop, move || {
                    http_ready.store(true, Ordering::Relaxed);
                    let _ = ready_tx.send(());
                })
            })?
    };
    if ready_rx.recv().is_err() {
        return match relay_thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("the relay stopped before it was ready")),
        };
    }

    let trigger_args = super::trigger::TriggerArgs {
        // An empty configuration, as for the relay half: not /etc/hark/hark.yaml, which
        // belongs to the packaged daemons.
        config: Some(PathBuf::from("/dev/null")),
        connect: vec![args.publish.clone()],
        fedmsg: Vec::new(),
        replay: vec![args.replay.clone()],
        srv: None,
        rules: vec![args.rules.clone()],
        state: Some(state.join("state.db")),
        trust,
        metrics: args.metrics,
        amqp: Default::default(),
    };
    let opts = super::trigger::options(trigger_args)?;
    let publish_line = format!(
        "{} publish --relay {} --key {} _hark.example.hello --data '{{\"name\": \"world\"}}'",
        this_program(),
        args.submit,
        secret.display()
    );
    let rules_dir = args.rules.clone();
    let result = crate::trigger::run(opts, metrics, Arc::new(AtomicBool::new(false)), || {
        eprintln!("\nhark serve is running.");
        eprintln!("  submit events to   {}", args.submit);
        eprintln!("  subscribe at       {}", args.publish);
        eprintln!("  replay from        {}", args.replay);
        if let Some(http) = &config.http.listen {
            eprintln!("  HTTP API on        http://{http}/");
        }
        eprintln!("  rules from         {}", rules_dir.display());
        eprintln!("  state in           {}", state.display());
        eprintln!("Fire the example rule from another terminal:\n  {publish_line}\n");
    });
    relay_stop.store(true, Ordering::Relaxed);
    match relay_thread.join() {
        Ok(Err(e)) => tracing::error!("relay: {e:#}"),
        Err(_) => tracing::error!("relay thread panicked"),
        Ok(Ok(())) => {}
    }
    result
}
