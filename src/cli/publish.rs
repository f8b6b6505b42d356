//! `hark publish`: sign one event and submit it to every configured relay, exiting 0 once
//! at least one relay has it; spool it when none answers; deliver the spool later.

use std::io::{BufRead as _, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::bus::ack::AckStatus;
use crate::bus::publish::{
    check_endpoint, restamp, submit_all, unsigned_event, PublishError, Target,
};
use crate::bus::relay::hostname;
use crate::bus::spool::Spool;
use crate::config::Config;
use crate::discovery::{Followed, RelayList, Resolver, Service};
use crate::event::keys::{read_signing_key, SigningKey};
use crate::event::openpgp::{self, OpenPgpSigner};

/// Exit code when no relay answered in time and the event was spooled for later delivery.
pub const EXIT_SPOOLED: u8 = 3;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The event data (a JSON object) comes from --data, --data-file, or stdin when \
neither is given. The uuid of the published event is printed on stdout.\n\n\
Every --relay and --lighthouse gets the event at once; subscribers drop the copies by uuid, so \
one relay down is no outage. A Laniakea Lighthouse never acks: it gets the event exactly once, \
and publication is confirmed by watching its publish socket for the uuid.\n\n\
When no relay answers in time the signed event is written to the spool (/var/spool/hark for \
root, $XDG_STATE_HOME/hark/spool otherwise); `hark publish --flush-spool` delivers spooled \
events in order, keeping their uuid. An event older than the relays' freshness window \
(trust.max_age) is re-stamped on flush when --key names its signer: same uuid and data, a \
fresh time, the first one kept as spooled_time.\n\n\
Exit status: 0 published by at least one relay (or already published by an earlier attempt), \
1 refused (the reason is printed), 2 bad usage (including a topic that is not literal or has \
an empty segment, and an endpoint without tcp:// or without a port; nothing is signed or \
spooled then), 3 no relay answered and the event was spooled (a relay host that does not resolve counts as \
no answer, since DNS may be down), \
75 no relay answered and nothing was spooled (--no-spool, or the spool is unwritable; with \
--flush-spool: events remain spooled). With --json-lines every line counts alone and the status \
is the worst of them: 75, then 1 (refused, or a line that is not a JSON object), then 3, then 0.\n\n\
Example:\n  hark publish --relay tcp://master:5571 --relay tcp://backup:5571 \\\n    \
--key /etc/hark/keys/secret/archive.key_secret _lk.archive.master.published --data '{\"repo\": \"master\"}'"
)]
pub struct PublishArgs {
    /// Topic (Laniakea `tag`), e.g. `_lk.archive.package-upload-accepted`.
    #[arg(required_unless_present = "flush_spool")]
    tag: Option<String>,
    /// A relay's submit endpoint (repeatable) [default: publish.relays from hark.yaml,
    /// tcp://127.0.0.1:5571]; https://HOST:PORT submits over the relay's HTTP API.
    #[arg(long, value_name = "EP")]
    relay: Vec<String>,
    /// Find the relays in DNS: the _hark-submit._tcp.DOMAIN records, best priority first
    /// (replaces --relay and publish.relays).
    #[arg(long, value_name = "DOMAIN", conflicts_with = "relay", value_parser = super::parse_domain)]
    srv: Option<String>,
    /// A relay that never acks, such as Laniakea's Lighthouse, as SUBMIT,PUBLISH endpoints
    /// (repeatable): sent once, confirmed on its publish socket.
    #[arg(long, value_name = "SUBMIT,PUBLISH", value_parser = Target::parse_watched)]
    lighthouse: Vec<Target>,
    /// Secret keyfile to sign with (Laniakea keyfile or `ed25519 <ver> <seed>` file); with
    /// --flush-spool, the key that may re-stamp stale events it signed.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["flush_spool", "openpgp_key", "gpg_key"])]
    key: Option<PathBuf>,
    /// Also (or instead) sign with the OpenPGP secret key in FILE (unencrypted, binary or
    /// armored), over the same bytes as the Ed25519 signature.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["gpg_key", "flush_spool"])]
    openpgp_key: Option<PathBuf>,
    /// Also (or instead) sign through gpg's agent with the key KEYID (a smartcard works, as
    /// for a Debian upload); runs `gpg --detach-sign`, the event bytes on its stdin.
    #[arg(long, value_name = "KEYID", conflicts_with = "flush_spool")]
    gpg_key: Option<String>,
    /// The name an OpenPGP signature is stored under in `signatures` (verifiers name the
    /// signer from their own keyring configuration, not from this).
    #[arg(long, value_name = "NAME", default_value = "openpgp")]
    openpgp_name: String,
    /// Event data as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the event data from FILE.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// Publish one event per line of stdin, each line the JSON object of its data (as
    /// `fedmsg-logger --json-input` does); every uuid is printed in turn.
    #[arg(long, conflicts_with_all = ["data", "data_file", "flush_spool"])]
    json_lines: bool,
    /// Who caused the event, stored (signed) as `author`.
    #[arg(long)]
    author: Option<String>,
    /// How long to wait for each relay's ack, resending meanwhile [default: publish.timeout,
    /// 10s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    timeout: Option<Duration>,
    /// Spool directory [default: publish.spool; unset: /var/spool/hark for root, else
    /// $XDG_STATE_HOME/hark/spool].
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Fail with status 75 instead of spooling when no relay answers.
    #[arg(long, conflicts_with = "flush_spool")]
    no_spool: bool,
    /// Deliver the spooled events in order instead of publishing a new one.
    #[arg(long, conflicts_with_all = ["tag", "data", "data_file", "author"])]
    flush_spool: bool,
    /// Configuration file (publish.* and ZeroMQ options).
    #[arg(long, env = "HARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// How one submission to every relay ended.
enum Delivery {
    Published {
        uuid: String,
        seqs: Vec<(String, u64)>,
    },
    Refused(Vec<PublishError>),
    NoAnswer(Vec<PublishError>),
}

fn deliver(
    destinations: &mut Destinations,
    event: &Value,
    timeout: Duration,
    config: &Config,
) -> Delivery {
    let mut published = None;
    let mut refused = Vec::new();
    let mut silent = Vec::new();
    let mut seqs = Vec::new();
    let tiers = destinations.tiers();
    if tiers.is_empty() {
        let name = destinations.name();
        silent.push(PublishError::Unresolvable {
            endpoint: format!("srv:{name}"),
            host: name,
            reason: "no relay found in DNS".into(),
        });
    }
    for tier in tiers {
        for (target, result) in submit_all(&tier, event, timeout, &config.zmq) {
            match result {
                Ok(ack) => {
                    if let (AckStatus::Accepted, Some(seq)) = (ack.status, ack.seq) {
                        seqs.push((target.submit().to_string(), seq));
                    }
                    published.get_or_insert(ack.uuid.unwrap_or_default());
                }
                Err(e @ PublishError::Refused { .. }) => refused.push(e),
                Err(e) => silent.push(e),
            }
        }
        if published.is_some() || !refused.is_empty() {
            break;
        }
        // Nobody in this tier answered: DNS may know better by now.
        destinations.failed();
    }
    match published {
        Some(uuid) => {
            // Published is what counts; the others are worth a line for the admin.
            for e in refused.iter().chain(&silent) {
                tracing::warn!("{e}");
            }
            Delivery::Published { uuid, seqs }
        }
        None if !silent.is_empty() => {
            for e in &refused {
                tracing::warn!("{e}");
            }
            Delivery::NoAnswer(silent)
        }
        None => Delivery::Refused(refused),
    }
}

/// Where events go: relays and lighthouses as written, or relays found in DNS (looked up
/// again, between events, once their TTL ran out), with the lighthouses beside them.
enum Destinations {
    Fixed(Vec<Target>),
    Srv {
        followed: Box<Followed>,
        lighthouses: Vec<Target>,
    },
}

impl Destinations {
    /// The targets by preference: each tier gets the event at once, and the next tier only
    /// if no relay of this one acked. Written lists are one tier; SRV records one per
    /// priority.
    fn tiers(&mut self) -> Vec<Vec<Target>> {
        match self {
            Destinations::Fixed(targets) => vec![targets.clone()],
            Destinations::Srv {
                followed,
                lighthouses,
            } => {
                followed.refresh_if_due();
                let mut tiers: Vec<Vec<Target>> = followed
                    .tiers()
                    .into_iter()
                    .map(|tier| {
                        tier.into_iter()
                            .map(|submit| Target::Acking { submit })
                            .collect()
                    })
                    .collect();
                match tiers.first_mut() {
                    Some(first) => first.extend(lighthouses.iter().cloned()),
                    None if !lighthouses.is_empty() => tiers.push(lighthouses.clone()),
                    None => {}
                }
                tiers
            }
        }
    }

    /// A relay of the last tiers did not answer: it may have moved.
    fn failed(&mut self) {
        if let Destinations::Srv { followed, .. } = self {
            followed.connection_failed();
        }
    }

    fn name(&self) -> String {
        match self {
            Destinations::Fixed(_) => String::new(),
            Destinations::Srv { followed, .. } => followed.name(),
        }
    }
}

/// The flags' relays, or else hark.yaml's, each endpoint checked so that a slip gets a
/// message naming where it was written and what to write instead.
fn targets(args: &PublishArgs, config: &Config) -> Result<Destinations, String> {
    let from_config = args.relay.is_empty() && args.lighthouse.is_empty() && args.srv.is_none();
    let (relays, lighthouses) = if from_config {
        let lighthouses = config
            .publish
            .lighthouses
            .iter()
            .map(|l| Target::parse_watched(l).map_err(|e| format!("publish.lighthouses: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        (config.publish.relays.clone(), lighthouses)
    } else {
        let relays = match &args.srv {
            Some(domain) => RelayList::Srv(domain.clone()),
            None => args.relay.clone().into(),
        };
        (relays, args.lighthouse.clone())
    };
    let (relay_key, lighthouse_key) = if from_config {
        ("publish.relays", "publish.lighthouses")
    } else {
        ("--relay", "--lighthouse")
    };
    for ep in relays.endpoints() {
        check_endpoint(ep).map_err(|e| format!("{relay_key} {e}"))?;
    }
    for target in &lighthouses {
        if let Target::Watched { submit, publish } = target {
            for ep in [submit, publish] {
                check_endpoint(ep).map_err(|e| format!("{lighthouse_key} {e}"))?;
            }
        }
    }
    if let RelayList::Srv(domain) = relays {
        let resolver =
            Resolver::new(&config.discovery.nameservers).map_err(|e| format!("{e:#}"))?;
        return Ok(Destinations::Srv {
            followed: Box::new(Followed::start(resolver, &domain, Service::Submit)),
            lighthouses,
        });
    }
    let mut targets: Vec<Target> = relays
        .endpoints()
        .iter()
        .map(|submit| Target::Acking {
            submit: submit.clone(),
        })
        .collect();
    targets.extend(lighthouses);
    if targets.is_empty() {
        return Err("no relay to publish to: give --relay or --srv, or set publish.relays".into());
    }
    Ok(Destinations::Fixed(targets))
}

fn spool(args: &PublishArgs, config: &Config) -> Spool {
    Spool::new(
        args.spool
            .clone()
            .or_else(|| config.publish.spool.clone())
            .unwrap_or_else(Spool::default_dir),
    )
}

/// Print `err` as `fail` does, for a status that is combined before the command exits.
fn failed(err: impl std::fmt::Display, code: u8) -> u8 {
    eprintln!("hark: error: {err}");
    code
}

fn fail_all(errors: &[PublishError], code: u8) -> u8 {
    for e in &errors[..errors.len().saturating_sub(1)] {
        eprintln!("hark: {e}");
    }
    match errors.last() {
        Some(e) => failed(e, code),
        None => code,
    }
}

/// The event data: a JSON object, and no number canonical JSON cannot write.
fn parse_data(text: &str, source: &str) -> Result<Value, String> {
    let data: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Err(format!("event data from {source} must be a JSON object")),
        Err(e) => return Err(format!("event data from {source} is not JSON: {e}")),
    };
    if let Some(n) = crate::event::canonical::non_finite(&data) {
        return Err(format!(
            "event data from {source}: {}",
            crate::event::sign::SignError::NonFinite(n.to_string())
        ));
    }
    Ok(data)
}

pub fn run(args: PublishArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    if args.flush_spool {
        return flush(&args, &config);
    }
    // Before anything is read or signed: these are slips to fix, not events to spool.
    let tag = args.tag.clone().unwrap_or_default();
    if let Err(e) = crate::topic::check_topic(&tag) {
        return super::fail(format!("invalid topic: {e}"), super::EXIT_USAGE);
    }
    let mut destinations = match targets(&args, &config) {
        Ok(t) => t,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let read_signers = || -> Result<Signers, String> {
        Ok(Signers {
            ed25519: match &args.key {
                Some(path) => Some(read_signing_key(path).map_err(|e| e.to_string())?),
                None => None,
            },
            openpgp: match &args.openpgp_key {
                Some(path) => Some(OpenPgpSigner::from_file(path)?),
                None => None,
            },
            gpg: args.gpg_key.clone(),
            name: args.openpgp_name.clone(),
        })
    };
    if args.json_lines {
        let mut signers = match read_signers() {
            Ok(k) => k,
            Err(e) => return super::fail(e, super::EXIT_USAGE),
        };
        return ExitCode::from(publish_lines(
            &args,
            &config,
            &mut destinations,
            &mut signers,
            &tag,
        ));
    }
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
    let data = match parse_data(&text, &source) {
        Ok(d) => d,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let mut signers = match read_signers() {
        Ok(k) => k,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    ExitCode::from(publish_data(
        &args,
        &config,
        &mut destinations,
        &mut signers,
        &tag,
        data,
    ))
}

/// `--json-lines`: every non-empty line of stdin is the data of one event, as
/// `fedmsg-logger --json-input` reads it. Each is signed, published (or spooled) and its
/// uuid printed in turn; a bad line is reported with its number and skipped. The status is
/// the worst any line would have had alone: 75 before 1 (refused or a bad line) before 3
/// (spooled) before 0.
fn publish_lines(
    args: &PublishArgs,
    config: &Config,
    destinations: &mut Destinations,
    signers: &mut Signers,
    tag: &str,
) -> u8 {
    let severity = |code: u8| match code {
        0 => 0,
        EXIT_SPOOLED => 1,
        super::EXIT_TEMPFAIL => 3,
        _ => 2,
    };
    let (mut worst, mut counts) = (0u8, [0usize; 4]);
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let number = index + 1;
        let code = match line {
            Err(e) => failed(
                format!("stdin:{number}: cannot read: {e}"),
                super::EXIT_USAGE,
            ),
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => match parse_data(&line, &format!("stdin:{number}")) {
                Ok(data) => publish_data(args, config, destinations, signers, tag, data),
                Err(e) => failed(e, 1),
            },
        };
        counts[severity(code)] += 1;
        if severity(code) > severity(worst) {
            worst = code;
        }
    }
    let [published, spooled, refused, unsent] = counts;
    tracing::info!(
        "{published} published, {spooled} spooled, {refused} refused or unreadable, {unsent} neither published nor spooled"
    );
    worst
}

/// Sign `data` as an event under `tag`, deliver it, and spool it when no relay answers;
/// prints its uuid. Returns the exit status this one event gives.
fn publish_data(
    args: &PublishArgs,
    config: &Config,
    destinations: &mut Destinations,
    signers: &mut Signers,
    tag: &str,
    data: Value,
) -> u8 {
    let author = args.author.clone().or_else(|| std::env::var("USER").ok());
    let mut event = unsigned_event(tag, data, Some(&hostname()), author.as_deref());
    if let Err(e) = signers.sign(&mut event) {
        return failed(e, 1);
    }
    let timeout = args.timeout.unwrap_or(config.publish.timeout);
    match deliver(destinations, &event, timeout, config) {
        Delivery::Published { uuid, seqs } => {
            println!("{uuid}");
            for (relay, seq) in seqs {
                tracing::info!("published by {relay} as seq {seq}");
            }
            0
        }
        Delivery::Refused(errors) => fail_all(&errors, 1),
        Delivery::NoAnswer(errors) if args.no_spool => fail_all(&errors, super::EXIT_TEMPFAIL),
        Delivery::NoAnswer(errors) => {
            for e in &errors {
                eprintln!("hark: {e}");
            }
            let spool = spool(args, config);
            match spool.put(&event) {
                Ok(path) => {
                    println!("{}", event["uuid"].as_str().unwrap_or_default());
                    failed(
                        format!(
                            "no relay answered; the event is spooled as {} (hark publish --flush-spool delivers it)",
                            path.display()
                        ),
                        EXIT_SPOOLED,
                    )
                }
                Err(e) => failed(
                    format!(
                        "no relay answered, and the event cannot be spooled in {}: {e}",
                        spool.dir().display()
                    ),
                    super::EXIT_TEMPFAIL,
                ),
            }
        }
    }
}

/// `--flush-spool`: deliver spooled events in order. A refusal for staleness is answered by
/// re-stamping (when --key is the event's signer); any other refusal sets the event aside in
/// `rejected/`; the first event no relay answers for stops the flush, to keep the order.
fn flush(args: &PublishArgs, config: &Config) -> ExitCode {
    let spool = spool(args, config);
    let mut destinations = match targets(args, config) {
        Ok(t) => t,
        Err(e) => return super::fail(e, super::EXIT_USAGE),
    };
    let timeout = args.timeout.unwrap_or(config.publish.timeout);
    let key: Option<SigningKey> = match &args.key {
        None => None,
        Some(path) => match read_signing_key(path) {
            Ok(k) => Some(k),
            Err(e) => return super::fail(e, super::EXIT_USAGE),
        },
    };
    let (events, broken) = match spool.list() {
        Ok(l) => (l.events, l.set_aside),
        Err(e) => {
            return super::fail(
                format!("cannot read the spool {}: {e}", spool.dir().display()),
                super::EXIT_TEMPFAIL,
            )
        }
    };
    for (path, reason) in &broken {
        tracing::warn!("set aside {}: {reason}", path.display());
    }
    let total = events.len();
    let mut delivered = 0;
    let mut rejected = broken.len();
    for mut spooled in events {
        let uuid = spooled.event["uuid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut restamped = false;
        loop {
            match deliver(&mut destinations, &spooled.event, timeout, config) {
                Delivery::Published { .. } => {
                    if let Err(e) = spool.done(&spooled) {
                        return super::fail(
                            format!(
                                "delivered {uuid}, but cannot remove {}: {e}",
                                spooled.path.display()
                            ),
                            1,
                        );
                    }
                    println!("{uuid}");
                    delivered += 1;
                }
                Delivery::Refused(errors) => {
                    let stale = errors.iter().all(
                        |e| matches!(e, PublishError::Refused { reason, .. } if reason == "stale"),
                    );
                    let signer = key
                        .as_ref()
                        .filter(|k| spooled.event["signatures"].get(&k.name).is_some());
                    match signer {
                        Some(k) if stale && !restamped => match restamp(&spooled.event, k) {
                            Ok(fresh) => {
                                if let Err(e) = spool.replace(&mut spooled, fresh) {
                                    return super::fail(format!("cannot re-stamp {}: {e}", spooled.path.display()), super::EXIT_TEMPFAIL);
                                }
                                tracing::info!(uuid = %uuid, "re-stamped: it was older than the relays' freshness window");
                                restamped = true;
                                continue;
                            }
                            Err(e) => return super::fail(format!("cannot re-sign {uuid}: {e}"), 1),
                        },
                        None if stale => {
                            return super::fail(
                                format!("{uuid} is older than the relays' freshness window; run the flush with --key set to its signer's secret key to re-stamp it ({} delivered, {} left)", delivered, total - delivered - rejected),
                                super::EXIT_TEMPFAIL,
                            )
                        }
                        _ => {
                            let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                            match spool.reject(&spooled.path, &reason) {
                                Ok(to) => tracing::warn!("set aside {uuid} as {}: {reason}", to.display()),
                                Err(e) => return super::fail(format!("cannot set aside {}: {e}", spooled.path.display()), 1),
                            }
                            rejected += 1;
                        }
                    }
                }
                Delivery::NoAnswer(errors) => {
                    for e in &errors {
                        eprintln!("hark: {e}");
                    }
                    return super::fail(
                        format!(
                            "no relay answered; {delivered} delivered, {} still spooled in {}",
                            total - delivered - rejected,
                            spool.dir().display()
                        ),
                        super::EXIT_TEMPFAIL,
                    );
                }
            }
            break;
        }
    }
    tracing::info!("spool flushed: {delivered} delivered, {rejected} set aside");
    if rejected > 0 {
        return super::fail(
            format!(
                "{rejected} spooled event(s) were refused and set aside in {}",
                spool.dir().join("rejected").display()
            ),
            1,
        );
    }
    ExitCode::SUCCESS
}

/// Every key an event is signed with: Ed25519 (`--key`), and OpenPGP by a key file or
/// through gpg's agent.
struct Signers {
    ed25519: Option<SigningKey>,
    openpgp: Option<OpenPgpSigner>,
    gpg: Option<String>,
    name: String,
}

impl Signers {
    fn sign(&mut self, event: &mut Value) -> Result<(), String> {
        if let Some(key) = &self.ed25519 {
            crate::event::sign::sign(event, key).map_err(|e| e.to_string())?;
        }
        if let Some(signer) = &mut self.openpgp {
            signer.sign(event, &self.name).map_err(|e| e.to_string())?;
        }
        if let Some(keyid) = &self.gpg {
            let message = crate::event::sign::checked_bytes(event).map_err(|e| e.to_string())?;
            let packet = gpg_detach_sign(keyid, &message)?;
            let issuer = openpgp::issuer_of(&packet)?;
            openpgp::insert(event, &self.name, &issuer, &packet).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A binary detached signature over `message` by gpg's key `keyid` (agent, smartcard and
/// pinentry as gpg is set up). The message goes through a pipe; nothing of the event is
/// put on a command line.
fn gpg_detach_sign(keyid: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gpg")
        .args([
            "--batch",
            "--no-tty",
            "--quiet",
            "--detach-sign",
            "--local-user",
        ])
        .arg(keyid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gpg: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("gpg has no stdin")?;
    let message = message.to_vec();
    // Written from a thread: gpg may start answering before it has read everything.
    let writer = std::thread::spawn(move || stdin.write_all(&message));
    let out = child.wait_with_output().map_err(|e| format!("gpg: {e}"))?;
    let written = writer
        .join()
        .map_err(|_| "gpg input thread panicked".to_string())?;
    if !out.status.success() {
        return Err(format!(
            "gpg --detach-sign --local-user {keyid} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    written.map_err(|e| format!("writing to gpg: {e}"))?;
    Ok(out.stdout)
}
