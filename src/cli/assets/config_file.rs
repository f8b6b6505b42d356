//! The packaged `/etc/hark/hark.yaml`: every setting of [`crate::config::settings`] with
//! its documentation and built-in default, commented out, so that an admin enables a
//! setting by deleting one `#`.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::settings::{self, Setting, SECTIONS};
use crate::config::Config;

/// The relay key the package generates at installation (see packaging/postinst).
pub const PACKAGED_RELAY_KEY: &str = "/etc/hark/keys/secret/relay.key_secret";

/// The configuration the packaged file amounts to: the built-in defaults, plus the relay key.
pub fn packaged_defaults() -> Config {
    let mut c = Config::default();
    c.relay.key = Some(PathBuf::from(PACKAGED_RELAY_KEY));
    c.relay.journal = Some(PathBuf::from(PACKAGED_JOURNAL));
    c.trigger.replay = vec![crate::journal::DEFAULT_REPLAY_ENDPOINT.to_string()].into();
    c
}

/// The packaged relay journal, in the relay's StateDirectory.
pub const PACKAGED_JOURNAL: &str = "/var/lib/hark/journal.db";

const HEADER: &str =
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

";

/// Writes a section: prose lines (`  # ...`) and settings. A setting equal to its built-in
/// default is written commented out (`#  key: value`, so that deleting the `#` enables it);
/// one that differs is written live.
struct SectionText {
    text: String,
    any_live: bool,
}

impl SectionText {
    fn new() -> Self {
        SectionText {
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

/// The text of `/etc/hark/hark.yaml` as packaged. The settings table is checked against the
/// fields of [`Config`] by a unit test, so the file always covers every setting.
pub fn packaged_config() -> String {
    render(&packaged_defaults(), &Config::default())
}

/// `config` as a commented hark.yaml, settings equal to `defaults` commented out (public
/// for tests/prop_roundtrip.rs, which reads generated configs back through it).
pub fn render(config: &Config, defaults: &Config) -> String {
    let mut out = String::from(HEADER);
    for section in SECTIONS {
        let mut s = SectionText::new();
        for setting in settings::of_section(section.name) {
            let Setting { key, doc, .. } = setting;
            s.setting(
                doc,
                key,
                setting.yaml_value(config),
                setting.yaml_value(defaults),
            );
        }
        s.finish(&mut out, section.name, section.doc);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert_eq!(live, crate::config::settings::SETTINGS.len(), "{text}");
        let c: Config = crate::config::parse_yaml(Path::new("hark.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c, packaged_defaults());
    }

    #[test]
    fn settings_that_differ_are_written_live_and_load_back() {
        let mut c = packaged_defaults();
        c.trust
            .grants
            .insert("buildd".into(), vec!["_lk.jobs.*".into()]);
        c.trigger.pools.insert("archive-io".into(), 2);
        c.trigger.metrics = Some("127.0.0.1:9464".into());
        c.zmq.linger = std::time::Duration::from_millis(250);
        let text = render(&c, &Config::default());
        assert!(text.contains("\ntrust:\n"), "{text}");
        assert!(
            text.contains("  # (built-in default: {})\n  grants: {\"buildd\": [\"_lk.jobs.*\"]}\n"),
            "{text}"
        );
        assert!(
            text.contains("  # (built-in default: unset)\n  metrics: \"127.0.0.1:9464\"\n"),
            "{text}"
        );
        assert!(text.contains("  linger: 250ms\n"), "{text}");
        let back = Config::from_yaml(Path::new("hark.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, c);
    }

    #[test]
    fn packaging_copy_is_up_to_date() {
        let shipped = include_str!("../../../packaging/hark.yaml");
        assert!(
            shipped == packaged_config(),
            "packaging/hark.yaml differs from the built-in defaults; regenerate it with\n  \
             cargo run -- generate-assets target/assets && cp target/assets/hark.yaml packaging/hark.yaml"
        );
    }
}
