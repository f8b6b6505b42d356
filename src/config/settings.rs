//! The one table of `hark.yaml` settings: every key path with what an admin needs to know
//! about it. The packaged, commented `/etc/hark/hark.yaml` and the CONFIGURATION section of
//! hark(1) are both written from [`SECTIONS`] and [`SETTINGS`]; defaults are not repeated
//! here but read from [`Config::default`] (serialized), so they have one source too. A unit
//! test fails when a field of [`Config`] has no entry here, or an entry names no field.

use serde_json::Value;

use super::Config;

/// How a value is written in YAML; everything but durations follows from its JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Path,
    Bool,
    Integer,
    /// Written bare: `30s`, `1h30m`.
    Duration,
    Endpoints,
    /// Endpoints, or `{srv: DOMAIN}` (DNS SRV discovery).
    Relays,
    /// `ADDRESS:PORT` socket addresses.
    Addresses,
    /// A list of IP addresses, without ports.
    IpAddresses,
    Paths,
    Names,
    Map,
}

impl Kind {
    /// The type as a reader would name it, for the man page.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Path => "path",
            Kind::Bool => "true or false",
            Kind::Integer => "integer",
            Kind::Duration => "duration",
            Kind::Endpoints => "list of endpoints",
            Kind::Relays => "list of endpoints, or {srv: DOMAIN}",
            Kind::Addresses => "list of ADDRESS:PORT",
            Kind::IpAddresses => "list of IP addresses",
            Kind::Paths => "list of paths",
            Kind::Names => "list of names",
            Kind::Map => "mapping",
        }
    }
}

/// A top-level section of `hark.yaml`.
#[derive(Debug)]
pub struct Section {
    pub name: &'static str,
    pub doc: &'static str,
}

/// One setting: `section.key`, its kind and its documentation (lines of prose).
#[derive(Debug)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

impl Setting {
    /// `trust.max_age`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// This setting's value in `config` as YAML flow text; empty when unset.
    pub fn yaml_value(&self, config: &Config) -> String {
        let value = serialized(config)
            .get(self.section)
            .and_then(|s| s.get(self.key))
            .cloned()
            .unwrap_or(Value::Null);
        match (self.kind, &value) {
            (Kind::Duration, Value::String(s)) => s.clone(),
            _ => flow(&value),
        }
    }
}

/// `config` as JSON: the shape (and key names) serde gives `hark.yaml`.
pub fn serialized(config: &Config) -> Value {
    // Config holds only strings, numbers, lists and maps with string keys.
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// YAML flow syntax for a JSON value. A JSON string is a YAML double-quoted string once the
/// characters YAML does not allow raw are escaped too (see [`yaml_string`]); null is written
/// as nothing, which YAML reads back as null (unset).
fn flow(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => yaml_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(&Value::String(k.clone())), flow(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `s` as a YAML double-quoted scalar. JSON's escapes are YAML's, but JSON leaves raw what
/// YAML refuses in a stream (DEL, the C1 controls, U+FFFE and U+FFFF) or may read
/// otherwise (a BOM, U+2028 and U+2029 as line breaks): those are written `\uXXXX` as well.
/// None of them occurs inside a JSON escape, so escaping after serde_json is safe.
fn yaml_string(s: &str) -> String {
    let json = Value::String(s.to_string()).to_string();
    let raw_in_yaml = |c: char| {
        matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        )
    };
    if !json.contains(raw_in_yaml) {
        return json;
    }
    json.chars()
        .map(|c| {
            if raw_in_yaml(c) {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The settings of one section, in table order.
pub fn of_section(section: &str) -> impl Iterator<Item = &'static Setting> + '_ {
    SETTINGS.iter().filter(move |s| s.section == section)
}

pub const SECTIONS: &[Section] = &[
    Section {
        name: "relay",
        doc: "The relay (hark relay, hark-relay.service): accepts signed events, checks them\n\
              against `trust`, countersigns them and publishes them to subscribers.",
    },
    Section {
        name: "trust",
        doc: "Which events the relay and the trigger daemon admit: signatures by trusted\n\
              keys, per-signer topic grants, freshness, duplicates.",
    },
    Section {
        name: "trigger",
        doc: "The trigger daemon (hark trigger, hark-trigger.service; also read by hark jobs):\n\
              matches admitted events against the rules and runs their commands.",
    },
    Section {
        name: "publish",
        doc: "hark publish: where events are submitted, and where they wait when no relay answers.",
    },
    Section {
        name: "discovery",
        doc: "DNS SRV discovery: how relay lists written as {srv: DOMAIN} are looked up.\n\
              Such a list follows the domain's _hark-submit._tcp, _hark-publish._tcp or\n\
              _hark-replay._tcp records, by priority and weight, looked up again when their\n\
              TTL runs out or a connection fails (docs/architecture.md, \"Finding relays\").",
    },
    Section {
        name: "http",
        doc: "The relay's HTTP API (hark relay --http): health, history (native and\n\
              datagrepper-compatible). Off unless listen is set; plain HTTP unless tls_cert\n\
              and tls_key are given (or put it behind a reverse proxy that terminates TLS;\n\
              docs/architecture.md, \"The HTTP API\").",
    },
    Section {
        name: "zmq",
        doc: "libzmq socket options, set explicitly on every socket of every command.",
    },
    Section {
        name: "amqp",
        doc: "An AMQP 0-9-1 broker (RabbitMQ; Fedora's fedora-messaging bus) whose queue the\n\
              trigger consumes (also hark tail --amqp and hark record --amqp). Off while\n\
              url is unset. Fedora's public broker, as its docs give it:\n  \
                url: \"amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub\"\n  \
                name: fedora\n  \
                queue: <a UUID of your own>   # Fedora allows UUID-named queues only\n  \
                bindings: {amq.topic: [\"org.fedoraproject.prod.#\"]}\n  \
                ca: /etc/fedora-messaging/cacert.pem\n  \
                cert: /etc/fedora-messaging/fedora-cert.pem\n  \
                key: /etc/fedora-messaging/fedora-key.pem",
    },
];

const fn s(section: &'static str, key: &'static str, kind: Kind, doc: &'static str) -> Setting {
    Setting {
        section,
        key,
        kind,
        doc,
    }
}

pub const SETTINGS: &[Setting] = &[
    // --- amqp ---
    s(
        "amqp",
        "url",
        Kind::Text,
        "amqp:// or amqps:// URL, with user, password and vhost (%2F is \"/\"), e.g.\n\
         \"amqp://guest:guest@127.0.0.1:5672/%2F\"; unset: no AMQP source. A lost\n\
         connection is made again with backoff (0.2 s doubling to 10 s), and the queue and\n\
         its bindings are declared again.",
    ),
    s(
        "amqp",
        "name",
        Kind::Text,
        "The broker's name: `broker` of its events, for rules (where: {broker: NAME}).",
    ),
    s(
        "amqp",
        "queue",
        Kind::Text,
        "Queue to consume. Named: messages wait there while the trigger is down. Unset: a\n\
         server-named queue that is deleted with the connection (nothing waits).",
    ),
    s(
        "amqp",
        "durable",
        Kind::Bool,
        "Declare the named queue durable, so it (and persistent messages) survive a broker\n\
         restart.",
    ),
    s(
        "amqp",
        "bindings",
        Kind::Map,
        "Exchange to the routing keys bound to the queue (AMQP topic patterns: * one word,\n\
         # any number). For example:\n  \
           bindings:\n    \
             amq.topic: [\"org.fedoraproject.prod.bodhi.#\", \"org.fedoraproject.prod.pungi.#\"]",
    ),
    s(
        "amqp",
        "prefetch",
        Kind::Integer,
        "Deliveries not yet acked at most. A delivery is acked once its jobs are stored (or\n\
         no rule matched), so this bounds memory and what a crash has redelivered.",
    ),
    s(
        "amqp",
        "dead_letter_exchange",
        Kind::Text,
        "Declare the queue with this x-dead-letter-exchange: messages that cannot become an\n\
         event (not JSON) are rejected without requeue and land there. Unset: dropped.",
    ),
    s(
        "amqp",
        "ca",
        Kind::Path,
        "CA certificates (PEM) that must have signed the broker's certificate (amqps).\n\
         Unset: the system's CA roots.",
    ),
    s(
        "amqp",
        "cert",
        Kind::Path,
        "Client certificate (PEM) for a broker that asks for one (Fedora's does).",
    ),
    s(
        "amqp",
        "key",
        Kind::Path,
        "The client certificate's private key (PEM).",
    ),
    s(
        "amqp",
        "results_exchange",
        Kind::Text,
        "Publish the trigger's `_hark.job.*` results to this exchange of the broker, in\n\
         fedora-messaging's format (routing key = topic), e.g. amq.topic. Unset: not.",
    ),
    // --- relay ---
    s(
        "relay",
        "name",
        Kind::Text,
        "Name stamped into unsigned.relay of every event; unset means the host name.",
    ),
    s(
        "relay",
        "submit",
        Kind::Endpoints,
        "ROUTER endpoints that accept submissions (Laniakea's default port is 5571).",
    ),
    s(
        "relay",
        "publish",
        Kind::Endpoints,
        "PUB endpoints that emit [tag, json] (Laniakea's default port is 5572).",
    ),
    s(
        "relay",
        "fedmsg_inbound",
        Kind::Endpoints,
        "SUB endpoints bound for fedmsg active publishers (Fedora used 9941).",
    ),
    s(
        "relay",
        "key",
        Kind::Path,
        "The relay's secret key, used to countersign what it publishes. The package\n\
         generates it at installation (signer name HOSTNAME-relay; the public half is\n\
         /etc/hark/keys/secret/relay.key, also copied into trust.trusted_dir).\n\
         Unset: events are relayed without a countersignature.",
    ),
    s(
        "relay",
        "max_message_size",
        Kind::Integer,
        "Largest accepted message in bytes (all frames together).",
    ),
    s(
        "relay",
        "workers",
        Kind::Integer,
        "Verification threads; 0 means one per CPU.",
    ),
    s(
        "relay",
        "heartbeat",
        Kind::Duration,
        "How often the relay publishes a heartbeat [_hark.heartbeat, {relay, epoch, head}],\n\
         from which subscribers learn what they missed; 0s turns heartbeats off.",
    ),
    s(
        "relay",
        "journal",
        Kind::Path,
        "The journal: every event the relay publishes (native and fedmsg pass-through)\n\
         is written here, with its seq, before it is published and acked, so that\n\
         subscribers can fetch what they missed from the replay socket. Seqs go on\n\
         across restarts; a new file starts a new epoch. When it cannot be written\n\
         (disk full), submissions are refused with reason journal-unavailable until\n\
         it can. The package sets /var/lib/hark/journal.db; unset: no journal and no\n\
         replay (subscribers still see gaps, but cannot fill them).",
    ),
    s(
        "relay",
        "journal_max_age",
        Kind::Duration,
        "Journaled events older than this are dropped (a replay of them gets an\n\
         explicit gap answer).",
    ),
    s(
        "relay",
        "journal_max_bytes",
        Kind::Integer,
        "The journal keeps at most this many bytes of frames; the oldest go first.\n\
         Its segment files (<journal>.segments/) may hold up to a quarter more (at\n\
         most 128 MiB) until the segments pruned events are in are deleted.",
    ),
    s(
        "relay",
        "replay",
        Kind::Endpoints,
        "ROUTER endpoints that answer replay requests from the journal (a seq range in\n\
         an epoch, or a time range, with topic prefixes; docs/architecture.md).",
    ),
    s(
        "relay",
        "metrics",
        Kind::Text,
        "ADDR:PORT for Prometheus metrics over HTTP (GET /metrics), e.g.\n\
         \"127.0.0.1:9465\"; off when unset. An address that cannot be bound stops the relay.",
    ),
    // --- trust ---
    s(
        "trust",
        "trusted_dir",
        Kind::Path,
        "Directory of trusted public keyfiles; each file's metadata.id is the signer's name.",
    ),
    s(
        "trust",
        "allow_unsigned",
        Kind::Bool,
        "Admit events that carry no trusted signature.",
    ),
    s(
        "trust",
        "allow_fedmsg",
        Kind::Bool,
        "Admit fedmsg-format events (their X.509 signatures are not checked, so they\n\
         carry no verified signer and never satisfy a rule's signed_by).",
    ),
    s(
        "trust",
        "grants",
        Kind::Map,
        "Signer name to the topic patterns it may publish. A trusted signer without a\n\
         grant is refused; \"*\" applies to every trusted signer. For example:\n  \
           grants:\n    \
             archive-master: [\"_lk.archive.**\"]\n    \
             buildd: [\"_lk.rubicon.**\", \"_lk.jobs.*\"]",
    ),
    s(
        "trust",
        "openpgp_keyrings",
        Kind::Map,
        "Signer name to an OpenPGP keyring file (binary or ASCII-armored). An event with\n\
         an OpenPGP signature by any key in it signs as that name, and as\n\
         openpgp:<FINGERPRINT> of the key's certificate; grants and signed_by apply as for\n\
         Ed25519 signers. Expired, revoked and non-signing keys are refused. For example:\n  \
           openpgp_keyrings:\n    \
             debian-developer: /usr/share/keyrings/debian-keyring.gpg",
    ),
    s(
        "trust",
        "max_age",
        Kind::Duration,
        "Refuse events whose `time` is older than this.",
    ),
    s(
        "trust",
        "max_future",
        Kind::Duration,
        "Refuse events whose `time` is further than this in the future (clock skew).",
    ),
    s(
        "trust",
        "dedupe_window",
        Kind::Duration,
        "Drop an event whose uuid was already seen within this window.",
    ),
    s(
        "trust",
        "dedupe_capacity",
        Kind::Integer,
        "Upper bound on remembered uuids, whatever the window.",
    ),
    // --- trigger ---
    s(
        "trigger",
        "connect",
        Kind::Relays,
        "Relay PUB endpoints to subscribe to (all of them; duplicates are dropped by uuid).\n\
         {srv: DOMAIN}: every _hark-publish._tcp record of DOMAIN, followed as it changes.",
    ),
    s(
        "trigger",
        "fedmsg",
        Kind::Endpoints,
        "fedmsg endpoints (hub, gateway) to subscribe to directly.",
    ),
    s(
        "trigger",
        "replay",
        Kind::Relays,
        "Replay endpoints of the relays (relay.replay). Events the daemon missed, seen\n\
         from relay seqs and heartbeats (while it was down, or lost on the way), are\n\
         fetched from there, admitted like any other and run once. The package sets\n\
         tcp://127.0.0.1:5573; unset: gaps are only reported. {srv: DOMAIN}: the\n\
         _hark-replay._tcp records of DOMAIN, asked in priority order.",
    ),
    s(
        "trigger",
        "rules",
        Kind::Paths,
        "Rule directories, vendor first; a later file with the same name replaces an earlier.",
    ),
    s(
        "trigger",
        "state",
        Kind::Path,
        "SQLite state file: jobs, failed jobs, done markers.",
    ),
    s(
        "trigger",
        "metrics",
        Kind::Text,
        "ADDR:PORT for Prometheus metrics over HTTP (GET /metrics), e.g.\n\
         \"127.0.0.1:9464\"; off when unset. An address that cannot be bound stops the daemon.",
    ),
    s(
        "trigger",
        "pools",
        Kind::Map,
        "Named pools shared across rules: name to number of slots, e.g. {archive-io: 2}.",
    ),
    s(
        "trigger",
        "log_limit",
        Kind::Integer,
        "Bytes of a job's output written to the log; the rest is counted only.",
    ),
    s(
        "trigger",
        "tail_limit",
        Kind::Integer,
        "Bytes of a job's output kept with the job.",
    ),
    s(
        "trigger",
        "shutdown_grace",
        Kind::Duration,
        "On SIGTERM, how long running jobs may finish before they are stopped\n\
         (hark-trigger.service allows 90s to stop: raise TimeoutStopSec with this).",
    ),
    s(
        "trigger",
        "reload_interval",
        Kind::Duration,
        "How often rule directories are checked for changes.",
    ),
    s(
        "trigger",
        "results_relay",
        Kind::Text,
        "Publish _hark.job.started|succeeded|failed to this relay submit endpoint\n\
         (set together with results_key).",
    ),
    s(
        "trigger",
        "results_key",
        Kind::Path,
        "Secret key that signs job result events (readable by user hark).",
    ),
    s(
        "trigger",
        "unit_users",
        Kind::Names,
        "Users a rule may run its job as, in a transient systemd unit (run.unit.user);\n\
         root is for the shipped piuparts rule. A rule naming any other user is refused\n\
         at load and by hark rules check, with its file:line:col. []: no rule may name one.",
    ),
    // --- publish ---
    s(
        "publish",
        "relays",
        Kind::Relays,
        "Submit endpoints of hark relays. Each event goes to all of them at once\n\
         (subscribers drop the copies by uuid); hark publish succeeds once one acks.\n\
         --relay replaces this list. {srv: DOMAIN}: the _hark-submit._tcp records of\n\
         DOMAIN; the event goes to all of the best priority, then to the next if none acks.",
    ),
    s(
        "publish",
        "lighthouses",
        Kind::Endpoints,
        "Relays that never ack, such as Laniakea's Lighthouse, as \"SUBMIT,PUBLISH\"\n\
         endpoint pairs: each gets the event once, confirmed on its publish socket.",
    ),
    s(
        "publish",
        "spool",
        Kind::Path,
        "Where an event waits when no relay answers in time, until\n\
         hark publish --flush-spool delivers it (hark-spool-flush.timer does so\n\
         every minute). Unset: /var/spool/hark for root, else\n\
         $XDG_STATE_HOME/hark/spool.",
    ),
    s(
        "publish",
        "timeout",
        Kind::Duration,
        "How long hark publish waits for each relay's ack, resending meanwhile.",
    ),
    // --- discovery ---
    s(
        "discovery",
        "nameservers",
        Kind::Addresses,
        "Nameservers to ask for SRV records and their targets, as ADDRESS:PORT, e.g.\n\
         [\"192.0.2.53:53\"]; empty: the system's (/etc/resolv.conf).",
    ),
    // --- http ---
    s(
        "http",
        "listen",
        Kind::Text,
        "ADDR:PORT for the HTTP API, e.g. \"127.0.0.1:5574\"; off when unset. An address\n\
         that cannot be bound stops the relay before it is ready.",
    ),
    s(
        "http",
        "tls_cert",
        Kind::Path,
        "PEM certificate chain (leaf first) to serve HTTPS with rustls; needs tls_key.",
    ),
    s(
        "http",
        "tls_key",
        Kind::Path,
        "PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert.",
    ),
    s(
        "http",
        "max_body",
        Kind::Integer,
        "Largest request body in bytes (POST /v1/submit, webhooks); larger ones get 413.\n\
         The relay's own relay.max_message_size applies to the event as well.",
    ),
    s(
        "http",
        "request_timeout",
        Kind::Duration,
        "A request must be read and answered within this: a connection whose request\n\
         head (line and headers) takes longer is closed, a slow body gets 408, and 504\n\
         when the relay does not ack in time.",
    ),
    s(
        "http",
        "rate_limit",
        Kind::Integer,
        "POST requests per second per client address (429 with Retry-After beyond);\n\
         0: no limit. Behind a reverse proxy, list it in trusted_proxies.",
    ),
    s(
        "http",
        "rate_burst",
        Kind::Integer,
        "Requests a client may send at once above rate_limit.",
    ),
    s(
        "http",
        "trusted_proxies",
        Kind::IpAddresses,
        "Reverse proxies (IP addresses, e.g. [\"127.0.0.1\", \"::1\"]) whose X-Forwarded-For\n\
         names the client, for rate_limit: read from the right, past every listed proxy.\n\
         Empty: every client is the address it connects from.",
    ),
    s(
        "http",
        "hooks",
        Kind::Map,
        "Forge webhooks, POST /v1/hooks/NAME, by NAME (one topic segment), each\n\
         {kind: gitlab|github|forgejo|gitea|hmac, secret_file: FILE, key: SECRETKEYFILE}\n\
         (hmac also takes header:). gitlab (Salsa) checks X-Gitlab-Token, the others the\n\
         HMAC-SHA256 in X-Hub-Signature-256, in constant time; wrong or missing: 401.\n\
         A verified payload becomes the event _hark.hook.NAME.<kind> (push, merge_request,\n\
         ...) with the payload as data, signed with key: trust its public half and grant\n\
         it _hark.hook.NAME.** (trust.grants), on the relay and in the trigger.\n\
         Example: {salsa: {kind: gitlab, secret_file: /etc/hark/hooks/salsa.secret,\n\
         key: /etc/hark/keys/secret/salsa-hook.key_secret}}",
    ),
    // --- zmq ---
    s(
        "zmq",
        "send_hwm",
        Kind::Integer,
        "Messages queued per peer before sending blocks or drops (ZMQ_SNDHWM).",
    ),
    s(
        "zmq",
        "receive_hwm",
        Kind::Integer,
        "Messages queued per peer on receipt (ZMQ_RCVHWM).",
    ),
    s(
        "zmq",
        "linger",
        Kind::Duration,
        "How long unsent messages are kept when a socket closes (ZMQ_LINGER).",
    ),
    s(
        "zmq",
        "tcp_keepalive_idle",
        Kind::Duration,
        "Idle time before TCP keepalive probes start (ZMQ_TCP_KEEPALIVE_IDLE).",
    ),
    s(
        "zmq",
        "heartbeat_interval",
        Kind::Duration,
        "ZMTP heartbeat interval (ZMQ_HEARTBEAT_IVL).",
    ),
    s(
        "zmq",
        "heartbeat_timeout",
        Kind::Duration,
        "A peer silent for this long is disconnected (ZMQ_HEARTBEAT_TIMEOUT).",
    ),
    s(
        "zmq",
        "reconnect_interval",
        Kind::Duration,
        "First delay before reconnecting (ZMQ_RECONNECT_IVL).",
    ),
    s(
        "zmq",
        "reconnect_interval_max",
        Kind::Duration,
        "Longest delay between reconnection attempts (ZMQ_RECONNECT_IVL_MAX).",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the serialized default Config, as `section.key`.
    fn config_keys() -> Vec<String> {
        let Value::Object(sections) = serialized(&Config::default()) else {
            panic!("Config does not serialize to a mapping");
        };
        let mut keys = Vec::new();
        for (name, section) in &sections {
            let Value::Object(fields) = section else {
                panic!("section {name} does not serialize to a mapping");
            };
            keys.extend(fields.keys().map(|k| format!("{name}.{k}")));
        }
        keys.sort();
        keys
    }

    #[test]
    fn the_table_covers_every_field_and_names_no_other() {
        let fields = config_keys();
        let mut table: Vec<String> = SETTINGS.iter().map(Setting::path).collect();
        table.sort();
        let missing: Vec<&String> = fields.iter().filter(|f| !table.contains(f)).collect();
        let unknown: Vec<&String> = table.iter().filter(|t| !fields.contains(t)).collect();
        assert!(
            missing.is_empty(),
            "Config fields with no table entry: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "table entries naming no field: {unknown:?}"
        );
        let mut dedup = table.clone();
        dedup.dedup();
        assert_eq!(dedup, table, "a setting is listed twice");
    }

    #[test]
    fn every_section_is_documented_once_and_every_setting_belongs_to_one() {
        let Value::Object(sections) = serialized(&Config::default()) else {
            panic!("Config does not serialize to a mapping");
        };
        let mut names: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = sections.keys().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(names, want);
        for setting in SETTINGS {
            assert!(
                SECTIONS.iter().any(|s| s.name == setting.section),
                "{}",
                setting.path()
            );
            assert!(
                !setting.doc.trim().is_empty(),
                "{} has no doc",
                setting.path()
            );
        }
    }

    #[test]
    fn kinds_match_the_serialized_values() {
        let config = serialized(&Config::default());
        for setting in SETTINGS {
            let value = &config[setting.section][setting.key];
            let ok = match setting.kind {
                Kind::Text | Kind::Path => value.is_string() || value.is_null(),
                Kind::Bool => value.is_boolean(),
                Kind::Integer => value.is_u64() || value.is_i64(),
                Kind::Duration => value
                    .as_str()
                    .is_some_and(|t| crate::duration::parse(t).is_ok()),
                Kind::Endpoints
                | Kind::Paths
                | Kind::Names
                | Kind::Addresses
                | Kind::IpAddresses => value.is_array(),
                Kind::Relays => value.is_array() || value.get("srv").is_some(),
                Kind::Map => value.is_object(),
            };
            assert!(
                ok,
                "{} is {value} but listed as {:?}",
                setting.path(),
                setting.kind
            );
        }
    }

    /// Found by tests/prop_roundtrip.rs: JSON leaves DEL, C1 controls and non-characters
    /// raw, which YAML refuses (`unexpected character`), so the packaged writer produced a
    /// hark.yaml that did not load.
    #[test]
    fn characters_yaml_refuses_raw_are_escaped() {
        let mut c = Config::default();
        let name = "a\u{7f}b\u{85}\u{9f}\u{2028}\u{feff}\u{fffe}\u{ffff}\u{e9}\u{1f600}\"\\";
        c.relay.name = Some(name.into());
        let setting = SETTINGS.iter().find(|s| s.path() == "relay.name").unwrap();
        let written = setting.yaml_value(&c);
        assert_eq!(
            written,
            "\"a\\u007fb\\u0085\\u009f\\u2028\\ufeff\\ufffe\\uffff\u{e9}\u{1f600}\\\"\\\\\""
        );
        let back: Config = crate::config::parse_yaml(
            std::path::Path::new("hark.yaml"),
            &format!("relay:\n  name: {written}\n"),
        )
        .unwrap();
        assert_eq!(back.relay.name.as_deref(), Some(name));
    }

    #[test]
    fn values_are_written_as_yaml_flow_text() {
        let mut c = Config::default();
        c.trust
            .grants
            .insert("buildd".into(), vec!["_lk.jobs.*".into(), "a.**".into()]);
        c.trigger.pools.insert("archive-io".into(), 2);
        let text = |path: &str| {
            let setting = SETTINGS.iter().find(|s| s.path() == path).unwrap();
            setting.yaml_value(&c)
        };
        assert_eq!(text("relay.name"), "");
        assert_eq!(text("relay.submit"), "[\"tcp://127.0.0.1:5571\"]");
        assert_eq!(text("relay.fedmsg_inbound"), "[]");
        assert_eq!(text("relay.workers"), "0");
        assert_eq!(text("trust.allow_fedmsg"), "true");
        assert_eq!(text("trust.max_age"), "1h");
        assert_eq!(text("zmq.reconnect_interval"), "100ms");
        assert_eq!(
            text("trust.grants"),
            "{\"buildd\": [\"_lk.jobs.*\", \"a.**\"]}"
        );
        assert_eq!(text("trigger.pools"), "{\"archive-io\": 2}");
        assert_eq!(
            text("trigger.rules"),
            "[\"/usr/share/hark/rules.d\", \"/etc/hark/rules.d\"]"
        );
    }
}
