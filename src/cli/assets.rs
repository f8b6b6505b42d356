//! `hark generate-assets DIR` (hidden): the files a package ships that are derived from the
//! code, so they never drift from it:
//!
//! - `DIR/man/*.1`: `hark(1)` and one page per subcommand (`hark-relay.1`,
//!   `hark-rules-check.1`, ...), from the clap definitions;
//! - `DIR/completions/{hark.bash,_hark,hark.fish}`: bash, zsh and fish completions;
//! - `DIR/hark.yaml`: the packaged `/etc/hark/hark.yaml`, every setting of
//!   [`crate::config`] with its built-in default, commented out.
//!
//! `make deb` runs this on the freshly built binary before cargo-deb packs the files.
//! Set `SOURCE_DATE_EPOCH` for a reproducible date in the man pages.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap_complete::Shell;

use crate::config::{Config, RelayConfig, TriggerConfig, TrustConfig, ZmqConfig};

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Output directory (created if missing); writes man/, completions/ and hark.yaml.
    pub out: PathBuf,
}

pub fn run(args: AssetsArgs) -> ExitCode {
    match generate(&args.out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(format!("generate-assets {}: {e}", args.out.display()), 1),
    }
}

/// Write every asset under `out`; returns the files written.
pub fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    for dir in [&man_dir, &comp_dir] {
        // Start clean so a subcommand that was removed leaves no stale page behind.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }
    written.extend(man_pages(&man_dir)?);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = public_command();
        written.push(clap_complete::generate_to(
            shell, &mut cmd, "hark", &comp_dir,
        )?);
    }
    let conf = out.join("hark.yaml");
    fs::write(&conf, packaged_config())?;
    written.push(conf);
    Ok(written)
}

/// The command without its hidden subcommands: clap_complete offers hidden subcommands
/// (zsh and bash list them), and `generate-assets` is no business of an admin's shell.
/// clap cannot remove a subcommand, so copy the root with the visible ones only.
fn public_command() -> clap::Command {
    let full = super::command();
    let mut cmd = clap::Command::new("hark")
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set());
    if full.get_version().is_some() {
        cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    }
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    for arg in full.get_arguments() {
        cmd = cmd.arg(arg.clone());
    }
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}

// ---------------------------------------------------------------------------------------
// Man pages
// ---------------------------------------------------------------------------------------

/// The packaged paths, for the FILES section of hark(1).
const FILES: &[(&str, &str)] = &[
    (
        "/etc/hark/hark.yaml",
        "Configuration of every command; each setting is shown with its default.",
    ),
    (
        "/usr/share/hark/rules.d/",
        "Vendor rules, shipped by packages.",
    ),
    (
        "/etc/hark/rules.d/",
        "Admin rules. A file here replaces the vendor file of the same name; a symlink to /dev/null masks it.",
    ),
    (
        "/etc/hark/keys/trusted/",
        "Public keyfiles of the trusted signers (each also needs a grant in trust.grants).",
    ),
    (
        "/etc/hark/keys/secret/",
        "Secret keys: relay.key_secret is the relay's key, generated at installation.",
    ),
    (
        "/var/lib/hark/state.db",
        "The trigger daemon's job store (SQLite).",
    ),
];

/// Escape text for a roff line: backslashes, and a leading `.` or `'` (a control line).
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `hark relay` becomes the page name `hark-relay`.
fn page_name(path: &[&str]) -> String {
    path.join("-")
}

fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now)
        .format("%Y-%m-%d")
        .to_string();
    let mut root = super::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    collect_pages(&root, &mut vec![root.get_name().to_string()], &mut pages);
    let all_names: Vec<String> = pages.iter().map(|(p, _)| page_name(&as_strs(p))).collect();

    let mut written = Vec::new();
    for (path, cmd) in pages {
        let name = page_name(&as_strs(&path));
        let version = cmd
            .get_version()
            .or(root.get_version())
            .unwrap_or_default()
            .to_string();
        let man = clap_mangen::Man::new(cmd.clone())
            .title(name.clone())
            .section("1")
            .date(date.clone())
            .source(format!("hark {version}"))
            .manual("hark manual");
        let mut page = Vec::new();
        man.render(&mut page)?;
        let mut page = String::from_utf8(page).map_err(io::Error::other)?;
        if path.len() == 1 {
            page.push_str(&root_sections(&all_names));
        } else {
            page.push_str(&see_also(&path, &cmd, &all_names));
        }
        let file = dir.join(format!("{name}.1"));
        fs::write(&file, page)?;
        written.push(file);
    }
    Ok(written)
}

fn as_strs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

/// Every visible command, depth first, with its path of names (`["hark", "rules", "check"]`).
fn collect_pages(
    cmd: &clap::Command,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, clap::Command)>,
) {
    // clap_mangen names a page after the display name clap sets while building
    // (`hark-rules-check`); title() overrides it, but keep the two consistent anyway.
    out.push((path.clone(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        path.push(sub.get_name().to_string());
        collect_pages(sub, path, out);
        path.pop();
    }
}

fn root_sections(all_names: &[String]) -> String {
    let mut s = String::new();
    s.push_str(".SH FILES\n");
    for (path, what) in FILES {
        let _ = write!(s, ".TP\n\\fI{}\\fR\n{}\n", roff_text(path), roff_text(what));
    }
    s.push_str(".SH ENVIRONMENT\n.TP\n\\fBHARK_LOG\\fR\nLog filter, as \\fB\\-\\-log\\fR.\n");
    s.push_str(
        ".SH EXIT STATUS\n0 on success; 1 on failure; 2 on bad usage or configuration; \
75 when a relay did not answer in time (\\fBhark publish\\fR).\n",
    );
    s.push_str(".SH SEE ALSO\n");
    let refs: Vec<String> = all_names
        .iter()
        .skip(1)
        .map(|n| format!("\\fB{}\\fR(1)", roff_text(n)))
        .collect();
    let _ = writeln!(s, "{},", refs.join(",\n"));
    s.push_str("\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1).\n");
    s.push_str(
        ".PP\n/usr/share/doc/hark/packaging.md (installation, keys, grants, services) and \
/usr/share/doc/hark/rules.md (the rule language).\n",
    );
    s
}

fn see_also(path: &[String], cmd: &clap::Command, all_names: &[String]) -> String {
    // hark(1), the parent command's page, and the pages of this command's own subcommands.
    let mut refs = vec!["hark".to_string()];
    if path.len() > 2 {
        refs.push(page_name(&as_strs(&path[..path.len() - 1])));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut p = path.to_vec();
        p.push(sub.get_name().to_string());
        let name = page_name(&as_strs(&p));
        if all_names.contains(&name) {
            refs.push(name);
        }
    }
    let refs: Vec<String> = refs
        .iter()
        .map(|n| format!("\\fB{}\\fR(1)", roff_text(n)))
        .collect();
    format!(".SH SEE ALSO\n{}\n", refs.join(",\n"))
}

// ---------------------------------------------------------------------------------------
// The packaged hark.yaml
// ---------------------------------------------------------------------------------------

/// The relay key the package generates at installation (see packaging/postinst).
pub const PACKAGED_RELAY_KEY: &str = "/etc/hark/keys/secret/relay.key_secret";

/// The configuration the packaged file amounts to: the built-in defaults, plus the relay key.
pub fn packaged_defaults() -> Config {
    let mut c = Config::default();
    c.relay.key = Some(PathBuf::from(PACKAGED_RELAY_KEY));
    c
}

fn q(s: &str) -> String {
    // JSON string syntax is valid YAML double-quoted string syntax.
    serde_json::to_string(s).expect("a string serializes")
}

fn path(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| q(i.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn paths(items: &[PathBuf]) -> String {
    let items: Vec<String> = items.iter().map(|p| path(p)).collect();
    format!("[{}]", items.join(", "))
}

fn opt_str(v: &Option<String>) -> String {
    v.as_deref().map(q).unwrap_or_default()
}

fn opt_path(v: &Option<PathBuf>) -> String {
    v.as_deref().map(path).unwrap_or_default()
}

fn dur(d: &Duration) -> String {
    crate::duration::format(*d)
}

fn grant_map(m: &BTreeMap<String, Vec<String>>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}: {}", q(k), list(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn pool_map(m: &BTreeMap<String, u32>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{}: {v}", q(k))).collect();
    format!("{{{}}}", items.join(", "))
}

/// Writes a section: prose lines (`  # ...`) and settings. A setting equal to its built-in
/// default is written commented out (`#  key: value`, so that deleting the `#` enables it);
/// one that differs is written live.
struct Section {
    text: String,
    any_live: bool,
}

impl Section {
    fn new() -> Self {
        Section {
            text: String::new(),
            any_live: false,
        }
    }

    fn setting(&mut self, doc: &str, key: &str, value: String, default: String) {
        for line in doc.lines() {
            if line.is_empty() {
                self.text.push_str("  #\n");
            } else {
                let _ = writeln!(self.text, "  # {line}");
            }
        }
        let sep = if value.is_empty() { "" } else { " " };
        if value == default {
            let _ = writeln!(self.text, "#  {key}:{sep}{value}");
        } else {
            self.any_live = true;
            let shown = if default.is_empty() {
                "unset"
            } else {
                &default
            };
            let _ = writeln!(self.text, "  # (built-in default: {shown})");
            let _ = writeln!(self.text, "  {key}:{sep}{value}");
        }
        self.text.push('\n');
    }

    fn finish(self, out: &mut String, name: &str, doc: &str) {
        for line in doc.lines() {
            let _ = writeln!(out, "# {line}");
        }
        if self.any_live {
            let _ = writeln!(out, "{name}:");
        } else {
            // A section header with nothing under it would be `null`: keep it commented too.
            let _ = writeln!(out, "#{name}:");
        }
        out.push_str(self.text.trim_end());
        out.push_str("\n\n");
    }
}

/// The text of `/etc/hark/hark.yaml` as packaged. Destructuring without `..` makes a new
/// field in `config.rs` a compile error here, so the file always covers every setting.
pub fn packaged_config() -> String {
    let Config {
        relay,
        trust,
        trigger,
        zmq,
    } = packaged_defaults();
    let Config {
        relay: d_relay,
        trust: d_trust,
        trigger: d_trigger,
        zmq: d_zmq,
    } = Config::default();

    let mut out = String::from(
        "# /etc/hark/hark.yaml: configuration of hark relay, hark trigger and the other hark commands.
#
# Every setting has a built-in default. This file lists them all, each one
# commented out with its default value; a line such as
#
#     #  workers: 0
#
# is a setting. To change one, delete the `#` at the start of its line (and of
# its section's line, such as `#trust:`), keeping the indentation, and edit
# the value. A flag on the command line overrides the file.
#
# After editing: systemctl restart hark-relay hark-trigger
# (`systemctl reload hark-trigger` only reloads the rules.)
# Check what the daemons will do: hark rules check; journalctl -u hark-trigger
#
# Durations are written 500ms, 30s, 10m, 2h, 1h30m, 1d. Endpoints are ZeroMQ
# addresses: tcp://127.0.0.1:5571, tcp://*:5571 (every interface), ipc:///run/x.
#
# Written by `hark generate-assets` from the defaults built into hark; see
# /usr/share/doc/hark/packaging.md.

",
    );

    // --- relay ---
    let RelayConfig {
        name,
        submit,
        publish,
        fedmsg_inbound,
        key,
        max_message_size,
        workers,
    } = &relay;
    let d = &d_relay;
    let mut s = Section::new();
    s.setting(
        "Name stamped into unsigned.relay of every event; unset means the host name.",
        "name",
        opt_str(name),
        opt_str(&d.name),
    );
    s.setting(
        "ROUTER endpoints that accept submissions (Laniakea's default port is 5571).",
        "submit",
        list(submit),
        list(&d.submit),
    );
    s.setting(
        "PUB endpoints that emit [tag, json] (Laniakea's default port is 5572).",
        "publish",
        list(publish),
        list(&d.publish),
    );
    s.setting(
        "SUB endpoints bound for fedmsg active publishers (Fedora used 9941).",
        "fedmsg_inbound",
        list(fedmsg_inbound),
        list(&d.fedmsg_inbound),
    );
    s.setting(
        "The relay's secret key, used to countersign what it publishes. The package\n\
         generates it at installation (signer name HOSTNAME-relay; the public half is\n\
         /etc/hark/keys/secret/relay.key, also copied into trust.trusted_dir).\n\
         Unset: events are relayed without a countersignature.",
        "key",
        opt_path(key),
        opt_path(&d.key),
    );
    s.setting(
        "Largest accepted message in bytes (all frames together).",
        "max_message_size",
        max_message_size.to_string(),
        d.max_message_size.to_string(),
    );
    s.setting(
        "Verification threads; 0 means one per CPU.",
        "workers",
        workers.to_string(),
        d.workers.to_string(),
    );
    s.finish(
        &mut out,
        "relay",
        "The relay (hark relay, hark-relay.service): accepts signed events, checks them\n\
         against `trust`, countersigns them and publishes them to subscribers.",
    );

    // --- trust ---
    let TrustConfig {
        trusted_dir,
        allow_unsigned,
        allow_fedmsg,
        grants,
        max_age,
        max_future,
        dedupe_window,
        dedupe_capacity,
    } = &trust;
    let d = &d_trust;
    let mut s = Section::new();
    s.setting(
        "Directory of trusted public keyfiles; each file's metadata.id is the signer's name.",
        "trusted_dir",
        path(trusted_dir),
        path(&d.trusted_dir),
    );
    s.setting(
        "Admit events that carry no trusted signature.",
        "allow_unsigned",
        allow_unsigned.to_string(),
        d.allow_unsigned.to_string(),
    );
    s.setting(
        "Admit fedmsg-format events (their X.509 signatures are not checked, so they\n\
         carry no verified signer and never satisfy a rule's signed_by).",
        "allow_fedmsg",
        allow_fedmsg.to_string(),
        d.allow_fedmsg.to_string(),
    );
    s.setting(
        "Signer name to the topic patterns it may publish. A trusted signer without a\n\
         grant is refused; \"*\" applies to every trusted signer. For example:\n  \
           grants:\n    \
             archive-master: [\"_lk.archive.**\"]\n    \
             buildd: [\"_lk.rubicon.**\", \"_lk.jobs.*\"]",
        "grants",
        grant_map(grants),
        grant_map(&d.grants),
    );
    s.setting(
        "Refuse events whose `time` is older than this.",
        "max_age",
        dur(max_age),
        dur(&d.max_age),
    );
    s.setting(
        "Refuse events whose `time` is further than this in the future (clock skew).",
        "max_future",
        dur(max_future),
        dur(&d.max_future),
    );
    s.setting(
        "Drop an event whose uuid was already seen within this window.",
        "dedupe_window",
        dur(dedupe_window),
        dur(&d.dedupe_window),
    );
    s.setting(
        "Upper bound on remembered uuids, whatever the window.",
        "dedupe_capacity",
        dedupe_capacity.to_string(),
        d.dedupe_capacity.to_string(),
    );
    s.finish(
        &mut out,
        "trust",
        "Which events the relay and the trigger daemon admit: signatures by trusted\n\
         keys, per-signer topic grants, freshness, duplicates.",
    );

    // --- trigger ---
    let TriggerConfig {
        connect,
        fedmsg,
        rules,
        state,
        metrics,
        pools,
        log_limit,
        tail_limit,
        shutdown_grace,
        reload_interval,
        results_relay,
        results_key,
    } = &trigger;
    let d = &d_trigger;
    let mut s = Section::new();
    s.setting(
        "Relay PUB endpoints to subscribe to (all of them; duplicates are dropped by uuid).",
        "connect",
        list(connect),
        list(&d.connect),
    );
    s.setting(
        "fedmsg endpoints (hub, gateway) to subscribe to directly.",
        "fedmsg",
        list(fedmsg),
        list(&d.fedmsg),
    );
    s.setting(
        "Rule directories, vendor first; a later file with the same name replaces an earlier.",
        "rules",
        paths(rules),
        paths(&d.rules),
    );
    s.setting(
        "SQLite state file: jobs, failed jobs, done markers.",
        "state",
        path(state),
        path(&d.state),
    );
    s.setting(
        "ADDR:PORT for Prometheus metrics over HTTP, e.g. \"127.0.0.1:9464\"; off when unset.",
        "metrics",
        opt_str(metrics),
        opt_str(&d.metrics),
    );
    s.setting(
        "Named pools shared across rules: name to number of slots, e.g. {archive-io: 2}.",
        "pools",
        pool_map(pools),
        pool_map(&d.pools),
    );
    s.setting(
        "Bytes of a job's output written to the log; the rest is counted only.",
        "log_limit",
        log_limit.to_string(),
        d.log_limit.to_string(),
    );
    s.setting(
        "Bytes of a job's output kept with the job.",
        "tail_limit",
        tail_limit.to_string(),
        d.tail_limit.to_string(),
    );
    s.setting(
        "On SIGTERM, how long running jobs may finish before they are stopped\n\
         (hark-trigger.service allows 90s to stop: raise TimeoutStopSec with this).",
        "shutdown_grace",
        dur(shutdown_grace),
        dur(&d.shutdown_grace),
    );
    s.setting(
        "How often rule directories are checked for changes.",
        "reload_interval",
        dur(reload_interval),
        dur(&d.reload_interval),
    );
    s.setting(
        "Publish _hark.job.started|succeeded|failed to this relay submit endpoint\n\
         (set together with results_key).",
        "results_relay",
        opt_str(results_relay),
        opt_str(&d.results_relay),
    );
    s.setting(
        "Secret key that signs job result events (readable by user hark).",
        "results_key",
        opt_path(results_key),
        opt_path(&d.results_key),
    );
    s.finish(
        &mut out,
        "trigger",
        "The trigger daemon (hark trigger, hark-trigger.service; also read by hark jobs):\n\
         matches admitted events against the rules and runs their commands.",
    );

    // --- zmq ---
    let ZmqConfig {
        send_hwm,
        receive_hwm,
        linger,
        tcp_keepalive_idle,
        heartbeat_interval,
        heartbeat_timeout,
        reconnect_interval,
        reconnect_interval_max,
    } = &zmq;
    let d = &d_zmq;
    let mut s = Section::new();
    s.setting(
        "Messages queued per peer before sending blocks or drops (ZMQ_SNDHWM).",
        "send_hwm",
        send_hwm.to_string(),
        d.send_hwm.to_string(),
    );
    s.setting(
        "Messages queued per peer on receipt (ZMQ_RCVHWM).",
        "receive_hwm",
        receive_hwm.to_string(),
        d.receive_hwm.to_string(),
    );
    s.setting(
        "How long unsent messages are kept when a socket closes (ZMQ_LINGER).",
        "linger",
        dur(linger),
        dur(&d.linger),
    );
    s.setting(
        "Idle time before TCP keepalive probes start (ZMQ_TCP_KEEPALIVE_IDLE).",
        "tcp_keepalive_idle",
        dur(tcp_keepalive_idle),
        dur(&d.tcp_keepalive_idle),
    );
    s.setting(
        "ZMTP heartbeat interval (ZMQ_HEARTBEAT_IVL).",
        "heartbeat_interval",
        dur(heartbeat_interval),
        dur(&d.heartbeat_interval),
    );
    s.setting(
        "A peer silent for this long is disconnected (ZMQ_HEARTBEAT_TIMEOUT).",
        "heartbeat_timeout",
        dur(heartbeat_timeout),
        dur(&d.heartbeat_timeout),
    );
    s.setting(
        "First delay before reconnecting (ZMQ_RECONNECT_IVL).",
        "reconnect_interval",
        dur(reconnect_interval),
        dur(&d.reconnect_interval),
    );
    s.setting(
        "Longest delay between reconnection attempts (ZMQ_RECONNECT_IVL_MAX).",
        "reconnect_interval_max",
        dur(reconnect_interval_max),
        dur(&d.reconnect_interval_max),
    );
    s.finish(
        &mut out,
        "zmq",
        "libzmq socket options, set explicitly on every socket of every command.",
    );

    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enable every commented-out setting: lines `#key:` / `#  key:` (prose is `# Text` or
    /// indented `  # text`, which never looks like that).
    fn uncomment_all(text: &str) -> String {
        let setting = regex::Regex::new(r"^(  )*[a-z_]+:( |$)").unwrap();
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if setting.is_match(rest) => rest.to_string(),
                _ => l.to_string(),
            })
            .map(|l| l + "\n")
            .collect()
    }

    #[test]
    fn packaged_config_loads_as_the_defaults_plus_the_relay_key() {
        let text = packaged_config();
        let c: Config = crate::config::parse_yaml(Path::new("hark.yaml"), &text).unwrap();
        assert_eq!(c, packaged_defaults());
        assert_eq!(c.relay.key.as_deref(), Some(Path::new(PACKAGED_RELAY_KEY)));
    }

    #[test]
    fn every_commented_default_is_the_built_in_default() {
        let text = uncomment_all(&packaged_config());
        // Every setting is now live: count them against the number of fields.
        let live = text
            .lines()
            .filter(|l| regex::Regex::new(r"^  [a-z_]+:").unwrap().is_match(l))
            .count();
        assert_eq!(live, 7 + 8 + 12 + 8, "{text}");
        let c: Config = crate::config::parse_yaml(Path::new("hark.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c, packaged_defaults());
    }

    #[test]
    fn packaging_copy_is_up_to_date() {
        let shipped = include_str!("../../packaging/hark.yaml");
        assert!(
            shipped == packaged_config(),
            "packaging/hark.yaml differs from the built-in defaults; regenerate it with\n  \
             cargo run -- generate-assets target/assets && cp target/assets/hark.yaml packaging/hark.yaml"
        );
    }

    #[test]
    fn man_pages_and_completions_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "hark.1",
            "hark-relay.1",
            "hark-trigger.1",
            "hark-rules-check.1",
            "hark.bash",
            "_hark",
            "hark.fish",
            "hark.yaml",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-assets")),
            "{names:?}"
        );
        for comp in ["hark.bash", "_hark", "hark.fish"] {
            let text = fs::read_to_string(dir.path().join("completions").join(comp)).unwrap();
            assert!(text.contains("relay"), "{comp}");
            assert!(
                !text.contains("generate-assets"),
                "{comp} offers the hidden command"
            );
        }
        let relay = fs::read_to_string(dir.path().join("man/hark-relay.1")).unwrap();
        assert!(
            relay.contains(".TH hark\\-relay 1") || relay.contains(".TH hark-relay 1"),
            "{relay}"
        );
        assert!(relay.contains(".SH SEE ALSO"), "{relay}");
    }
}
