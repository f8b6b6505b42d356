//! `hark.yaml`: every setting with its built-in default, so that hark runs with no file at
//! all. This module owns loading and validating the file; each component receives only its
//! own section. Errors name the file, line and column.
//!
//! - here: the structs (one per section), their defaults, parsing and [`Config::load`];
//! - [`settings`]: the one table of settings and their documentation, from which the
//!   packaged hark.yaml and hark(1) are written (field doc comments here stay one-liners);
//! - [`validate`]: checks across settings, reported at the offending key's position.

pub mod settings;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::discovery::RelayList;
use crate::duration::serde_text;

/// Where the packaged configuration lives.
pub const DEFAULT_PATH: &str = "/etc/hark/hark.yaml";

/// A YAML file that could not be used: `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    pub location: Option<(u64, u64)>,
    pub message: String,
}

/// Parse YAML text into `T`, reporting errors against `path`.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let location = e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| (l.line(), l.column()));
        // The first line of saphyr's rendering is the message; the rest is a snippet that
        // names "<input>", which would only confuse next to our own file:line:col.
        let rendered = e.to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim_start_matches("error: ")
            .to_string();
        let message = strip_location_suffix(&message);
        FileError {
            path: path.to_path_buf(),
            location,
            message,
        }
    })
}

fn strip_location_suffix(message: &str) -> String {
    let mut m = message
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .to_string();
    if let Some(idx) = m.find(" at line ") {
        m.truncate(idx);
    }
    if let Some(rest) = m.strip_prefix("line ") {
        if let Some((_, tail)) = rest.split_once(": ") {
            return tail.to_string();
        }
    }
    m
}

/// The whole file. Field docs here are reminders; the text admins read (hark.yaml
/// comments, hark(1)) is in [`settings::SETTINGS`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub relay: RelayConfig,
    pub trust: TrustConfig,
    pub trigger: TriggerConfig,
    pub publish: PublishConfig,
    pub zmq: ZmqConfig,
    pub amqp: AmqpConfig,
    pub discovery: DiscoveryConfig,
    pub http: HttpConfig,
}

impl Config {
    /// Load `path` if given (it must exist), else the packaged file if present, else the
    /// built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, FileError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| FileError {
            path: path.clone(),
            location: None,
            message: e.to_string(),
        })?;
        Config::from_yaml(&path, &text)
    }

    /// Parse and validate the text of a hark.yaml read from `path`: syntax, types and
    /// unknown keys (serde), then [`validate::check`]. The first problem found is the
    /// error, at the position of the key it is about.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Config, FileError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = parse_yaml(path, text)?;
        match validate::check(&config).into_iter().next() {
            None => Ok(config),
            Some(problem) => Err(FileError {
                path: path.to_path_buf(),
                location: validate::Positions::of(text).find(&problem.path),
                message: problem.message,
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Name under `unsigned.relay`; defaults to the host name.
    pub name: Option<String>,
    /// ROUTER endpoints that accept submissions (Laniakea's default port is 5571).
    pub submit: Vec<String>,
    /// PUB endpoints that emit `[tag, json]` (Laniakea's default port is 5572).
    pub publish: Vec<String>,
    /// SUB endpoints bound for fedmsg active publishers (Fedora used 9941).
    pub fedmsg_inbound: Vec<String>,
    /// The relay's secret key; without one, events are relayed without a countersignature.
    pub key: Option<PathBuf>,
    /// Largest accepted message in bytes (all frames together).
    pub max_message_size: usize,
    /// Verification threads; 0 means one per CPU.
    pub workers: usize,
    /// How often a heartbeat `{relay, epoch, head}` is published; 0s turns them off.
    #[serde(with = "serde_text")]
    pub heartbeat: Duration,
    /// The journal (SQLite) every published event is written to first; unset: none.
    pub journal: Option<PathBuf>,
    /// Journal retention by age.
    #[serde(with = "serde_text")]
    pub journal_max_age: Duration,
    /// Journal retention by size of the stored frames, in bytes.
    pub journal_max_bytes: u64,
    /// ROUTER endpoints that answer replay requests from the journal.
    pub replay: Vec<String>,
    /// `ADDR:PORT` for Prometheus metrics over HTTP; off when unset.
    pub metrics: Option<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            name: None,
            submit: vec!["tcp://127.0.0.1:5571".into()],
            publish: vec!["tcp://127.0.0.1:5572".into()],
            fedmsg_inbound: Vec::new(),
            key: None,
            max_message_size: 1024 * 1024,
            workers: 0,
            heartbeat: Duration::from_secs(5),
            journal: None,
            journal_max_age: crate::journal::DEFAULT_MAX_AGE,
            journal_max_bytes: crate::journal::DEFAULT_MAX_BYTES,
            replay: vec![crate::journal::DEFAULT_REPLAY_ENDPOINT.into()],
            metrics: None,
        }
    }
}

/// What `hark publish` submits to, and where it spools.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Submit endpoints of hark relays; all get every event. Or `{srv: DOMAIN}`.
    pub relays: RelayList,
    /// Relays that never ack (Laniakea's Lighthouse), as `SUBMIT,PUBLISH`.
    pub lighthouses: Vec<String>,
    /// Spool directory; unset: /var/spool/hark for root, else $XDG_STATE_HOME/hark/spool.
    pub spool: Option<PathBuf>,
    /// How long to wait for each relay's ack.
    #[serde(with = "serde_text")]
    pub timeout: Duration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            relays: vec!["tcp://127.0.0.1:5571".to_string()].into(),
            lighthouses: Vec::new(),
            spool: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Directory of public keyfiles; each file's `metadata.id` is the signer's name.
    pub trusted_dir: PathBuf,
    /// Admit events that carry no trusted signature.
    pub allow_unsigned: bool,
    /// Admit fedmsg-format events (unverified: they never satisfy `signed_by`).
    pub allow_fedmsg: bool,
    /// Signer name to the topic patterns it may publish. `"*"` applies to every signer.
    pub grants: BTreeMap<String, Vec<String>>,
    /// Signer name to an OpenPGP keyring file: an event signed by any key in it signs as
    /// that name (and as `openpgp:<fingerprint>`).
    pub openpgp_keyrings: BTreeMap<String, PathBuf>,
    /// Refuse events whose `time` is older than this.
    #[serde(with = "serde_text")]
    pub max_age: Duration,
    /// Refuse events whose `time` is further than this in the future (clock skew).
    #[serde(with = "serde_text")]
    pub max_future: Duration,
    /// Drop an event whose uuid was already seen within this window.
    #[serde(with = "serde_text")]
    pub dedupe_window: Duration,
    /// Upper bound on remembered uuids, whatever the window.
    pub dedupe_capacity: usize,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            trusted_dir: PathBuf::from("/etc/hark/keys/trusted"),
            allow_unsigned: false,
            allow_fedmsg: true,
            grants: BTreeMap::new(),
            openpgp_keyrings: BTreeMap::new(),
            max_age: Duration::from_secs(3600),
            max_future: Duration::from_secs(300),
            dedupe_window: Duration::from_secs(3600),
            dedupe_capacity: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    /// Relay PUB endpoints to subscribe to (all of them; duplicates are dropped by uuid).
    pub connect: RelayList,
    /// fedmsg endpoints (hub, gateway) to subscribe to directly.
    pub fedmsg: Vec<String>,
    /// Relay replay endpoints to fetch missed events from.
    pub replay: RelayList,
    /// Rule directories, vendor first; a later file with the same name replaces an earlier.
    pub rules: Vec<PathBuf>,
    /// SQLite state file: jobs, failed jobs, done markers.
    pub state: PathBuf,
    /// `ADDR:PORT` for Prometheus metrics over HTTP; off when unset.
    pub metrics: Option<String>,
    /// Named pools shared across rules: name to number of slots.
    pub pools: BTreeMap<String, u32>,
    /// Bytes of a job's output written to the log; the rest is counted only.
    pub log_limit: usize,
    /// Bytes of a job's output kept with the job.
    pub tail_limit: usize,
    /// On SIGTERM, how long running jobs may finish before they are stopped.
    #[serde(with = "serde_text")]
    pub shutdown_grace: Duration,
    /// How often rule directories are checked for changes.
    #[serde(with = "serde_text")]
    pub reload_interval: Duration,
    /// Publish `_hark.job.started|succeeded|failed` to this relay submit endpoint.
    pub results_relay: Option<String>,
    /// Secret key that signs job result events.
    pub results_key: Option<PathBuf>,
    /// Users a rule's `run.unit.user` may name (its job runs as a transient systemd unit).
    pub unit_users: Vec<String>,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            connect: vec!["tcp://127.0.0.1:5572".to_string()].into(),
            fedmsg: Vec::new(),
            replay: RelayList::default(),
            rules: vec![
                PathBuf::from("/usr/share/hark/rules.d"),
                PathBuf::from("/etc/hark/rules.d"),
            ],
            state: PathBuf::from("/var/lib/hark/state.db"),
            metrics: None,
            pools: BTreeMap::new(),
            log_limit: 1024 * 1024,
            tail_limit: 16 * 1024,
            shutdown_grace: Duration::from_secs(30),
            reload_interval: Duration::from_secs(2),
            results_relay: None,
            results_key: None,
            // The shipped piuparts rule runs as root; an admin who wants no rule to, says [].
            unit_users: vec!["root".into()],
        }
    }
}

/// One AMQP 0-9-1 broker (RabbitMQ, fedora-messaging) the trigger consumes a queue of.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL with user and vhost; off when unset.
    pub url: Option<String>,
    /// The broker's name: `broker` of its events in rules.
    pub name: String,
    /// Queue to consume; unset: a server-named queue that lives as long as the connection.
    pub queue: Option<String>,
    /// Declare the named queue durable (it and its persistent messages survive restarts).
    pub durable: bool,
    /// Exchange to the routing keys bound to the queue.
    pub bindings: BTreeMap<String, Vec<String>>,
    /// Unacked deliveries at most (bounds memory and what a crash redelivers).
    pub prefetch: u16,
    /// `x-dead-letter-exchange` of the declared queue: where rejected messages go.
    pub dead_letter_exchange: Option<String>,
    /// CA certificates (PEM) the broker's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that ask for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM, PKCS#8).
    pub key: Option<PathBuf>,
    /// Publish `_hark.job.*` results to this exchange (fedora-messaging's format).
    pub results_exchange: Option<String>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: None,
            name: "amqp".into(),
            queue: None,
            durable: true,
            bindings: BTreeMap::from([("amq.topic".to_string(), vec!["#".to_string()])]),
            prefetch: 100,
            dead_letter_exchange: None,
            ca: None,
            cert: None,
            key: None,
            results_exchange: None,
        }
    }
}

/// How relay lists written as `{srv: DOMAIN}` are looked up.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Nameservers as `ADDRESS:PORT`; empty: the system's (/etc/resolv.conf).
    pub nameservers: Vec<std::net::SocketAddr>,
}

/// The relay's HTTP API (src/http/).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `ADDR:PORT` the relay serves HTTP on; off when unset.
    pub listen: Option<String>,
    /// PEM certificate chain (leaf first) for HTTPS; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// A request must be read and answered within this.
    #[serde(with = "serde_text")]
    pub request_timeout: Duration,
    /// POST requests per second per client address; 0: no limit.
    pub rate_limit: u32,
    /// Requests a client may send at once above the rate.
    pub rate_burst: u32,
    /// Reverse proxies trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Forge webhooks by name: `POST /v1/hooks/NAME`.
    pub hooks: BTreeMap<String, HookConfig>,
}

/// How a webhook proves it knows the hook's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// GitLab and Salsa: the secret itself in `X-Gitlab-Token`.
    Gitlab,
    /// HMAC-SHA256 of the body in `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    Forgejo,
    Gitea,
    /// HMAC-SHA256 of the body in `header` (default `X-Hub-Signature-256`).
    Hmac,
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub kind: HookKind,
    /// File whose first line is the hook's secret.
    pub secret_file: PathBuf,
    /// The hook's own secret keyfile: its events are signed with it.
    pub key: PathBuf,
    /// For `kind: hmac`: the header with the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            tls_cert: None,
            tls_key: None,
            max_body: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            rate_limit: 50,
            rate_burst: 200,
            trusted_proxies: Vec::new(),
            hooks: BTreeMap::new(),
        }
    }
}

/// libzmq socket options, set explicitly on every socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZmqConfig {
    pub send_hwm: i32,
    pub receive_hwm: i32,
    #[serde(with = "serde_text")]
    pub linger: Duration,
    #[serde(with = "serde_text")]
    pub tcp_keepalive_idle: Duration,
    #[serde(with = "serde_text")]
    pub heartbeat_interval: Duration,
    #[serde(with = "serde_text")]
    pub heartbeat_timeout: Duration,
    #[serde(with = "serde_text")]
    pub reconnect_interval: Duration,
    #[serde(with = "serde_text")]
    pub reconnect_interval_max: Duration,
}

impl Default for ZmqConfig {
    fn default() -> Self {
        ZmqConfig {
            send_hwm: 100_000,
            receive_hwm: 100_000,
            linger: Duration::from_secs(1),
            tcp_keepalive_idle: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            reconnect_interval: Duration::from_millis(100),
            reconnect_interval_max: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_partial_files_keep_defaults() {
        let c: Config = parse_yaml(Path::new("x.yaml"), "relay:\n  workers: 3\n").unwrap();
        assert_eq!(c.relay.workers, 3);
        assert_eq!(c.relay.submit, RelayConfig::default().submit);
        assert_eq!(c.trust, TrustConfig::default());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse_yaml::<Config>(
            Path::new("/etc/hark/hark.yaml"),
            "relay:\n  workers: 2\ntrust:\n  max_age: soon\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/hark/hark.yaml:4:"), "{text}");
        assert!(text.contains("1h30m"), "{text}");

        let err = parse_yaml::<Config>(Path::new("h.yaml"), "relay:\n  submitt: []\n").unwrap_err();
        assert!(err.to_string().starts_with("h.yaml:2:"), "{err}");
        assert!(err.to_string().contains("submitt"), "{err}");

        let err = parse_yaml::<Config>(Path::new("h.yaml"), "relay:\n  workers: 1\n  workers: 2\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("h.yaml:3:"), "{err}");
    }

    fn load_text(text: &str) -> Result<Config, FileError> {
        Config::from_yaml(Path::new("/etc/hark/hark.yaml"), text)
    }

    #[test]
    fn results_relay_without_results_key_is_refused_at_its_line() {
        let err =
            load_text("trigger:\n  state: /tmp/s.db\n  results_relay: tcp://r:5571\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/hark/hark.yaml:3:3: "), "{text}");
        assert!(text.contains("trigger.results_key"), "{text}");
        assert!(text.contains("set both or neither"), "{text}");
    }

    #[test]
    fn results_key_without_results_relay_is_refused_at_its_line() {
        let err = load_text("relay:\n  workers: 1\ntrigger:\n    results_key: /k\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/hark/hark.yaml:4:5: "), "{text}");
        assert!(text.contains("trigger.results_relay"), "{text}");
        assert!(text.contains("set both or neither"), "{text}");
    }

    #[test]
    fn results_relay_and_key_together_are_accepted() {
        let c = load_text("trigger:\n  results_relay: tcp://r:5571\n  results_key: /k\n").unwrap();
        assert_eq!(c.trigger.results_relay.as_deref(), Some("tcp://r:5571"));
    }

    #[test]
    fn a_bad_grant_glob_is_refused_at_the_glob() {
        let err = load_text(
            "trust:\n  grants:\n    archive-master: [\"_lk.archive.**\"]\n    buildd: [\"_lk.jobs.*\", \"_lk..x\"]\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/hark/hark.yaml:4:28: "), "{text}");
        assert!(text.contains("grant for \"buildd\""), "{text}");

        // Block-style lists point at the element too.
        let err = load_text("trust:\n  grants:\n    \"*\":\n      - \"a.b\"\n      - \"a.{b\"\n")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("/etc/hark/hark.yaml:5:9: "),
            "{err}"
        );
    }

    #[test]
    fn good_grants_load() {
        let c = load_text("trust:\n  grants:\n    \"*\": [\"**\"]\n    b: [\"_lk.{x,y}.*\"]\n")
            .unwrap();
        assert_eq!(c.trust.grants.len(), 2);
    }

    #[test]
    fn load_reads_and_validates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hark.yaml");
        std::fs::write(&file, "trigger:\n  results_key: /k\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2:3: ", file.display())),
            "{err}"
        );
        std::fs::write(&file, "  \n").unwrap();
        assert_eq!(Config::load(Some(&file)).unwrap(), Config::default());
    }
}
