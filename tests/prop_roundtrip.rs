//! Round trips through hark's own writers and readers, over generated input:
//! - durations: `duration::format` then `duration::parse` gives the same milliseconds, and
//!   any text `parse` accepts is written back to a text that parses to the same value;
//! - the config: a generated `Config` (strings with every kind of character: quotes,
//!   backslashes, `#`, `: `, controls, DEL, C1, U+2028, BOM, non-characters, non-BMP)
//!   written as hark.yaml by the packaging writer and read back is the same `Config`;
//! - templates: parse → write back from the parts → parse gives the same parts, and a
//!   template over quoted `data["..."]` keys renders each key's value in place.

mod prop_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hark::cli::assets::config_file;
use hark::config::{parse_yaml, Config};
use hark::duration;
use hark::event::Event;
use hark::rules::template::{Part, Ref, Template};
use proptest::prelude::*;
use serde_json::json;

#[test]
fn durations_survive_format_and_parse() {
    proptest!(prop_support::config("prop_roundtrip", 2000), |(ms in prop_oneof![
        0u64..100_000,
        any::<u64>().prop_map(|m| m % (u64::MAX / 2)),
        (0u64..400, 0u64..24, 0u64..60, 0u64..60, 0u64..1000)
            .prop_map(|(d, h, m, s, ms)| (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms),
    ])| {
        let d = Duration::from_millis(ms);
        let text = duration::format(d);
        prop_assert_eq!(duration::parse(&text), Ok(d), "{}", text);
    });
}

#[test]
fn parsed_durations_are_written_back_the_same() {
    proptest!(prop_support::config("prop_roundtrip", 2000), |(text in "[0-9]{1,4}(d|h|m|s|ms)([0-9]{1,3}(h|m|s|ms)){0,3}")| {
        if let Ok(d) = duration::parse(&text) {
            let written = duration::format(d);
            prop_assert_eq!(duration::parse(&written), Ok(d), "{} written as {}", text, written);
        }
    });
}

/// Text of any characters a YAML writer must take care of.
fn any_text() -> impl Strategy<Value = String> {
    let special = prop_oneof![
        Just('"'),
        Just('\\'),
        Just('#'),
        Just(':'),
        Just(' '),
        Just('-'),
        Just('\''),
        Just('\t'),
        Just('\n'),
        Just('\r'),
        Just('{'),
        Just('['),
        Just('&'),
        Just('*'),
        Just('!'),
        Just('%'),
        Just('@'),
        Just('`'),
        Just('|'),
        Just('>'),
        Just(','),
        (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('?')),
        (0x7fu32..0xa1).prop_map(|c| char::from_u32(c).unwrap_or('?')),
        Just('\u{2028}'),
        Just('\u{2029}'),
        Just('\u{feff}'),
        Just('\u{fffe}'),
        Just('\u{ffff}'),
        Just('\u{d7ff}'),
        Just('\u{e000}'),
        any::<char>(),
        "[a-z0-9]".prop_map(|s| s.chars().next().unwrap_or('a')),
    ];
    prop::collection::vec(special, 0..10).prop_map(|cs| cs.into_iter().collect())
}

fn any_list() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any_text(), 0..3)
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000).prop_map(Duration::from_millis),
        (0u64..10_000_000).prop_map(Duration::from_secs),
    ]
}

/// A config with generated values in every kind of field.
fn any_config() -> impl Strategy<Value = Config> {
    (
        (
            prop::option::of(any_text()),
            any_list(),
            any_list(),
            prop::option::of(any_text()),
            any::<usize>(),
            any_duration(),
        ),
        (
            prop::collection::btree_map(any_text(), any_list(), 0..3),
            prop::collection::btree_map(any_text(), any_text(), 0..2),
            any_duration(),
            any::<bool>(),
            any_text(),
        ),
        (
            any_list(),
            any_list(),
            prop::collection::btree_map(any_text(), any::<u32>(), 0..3),
            prop::option::of(any_text()),
            any_duration(),
            any::<i32>(),
        ),
    )
        .prop_map(|(relay, trust, trigger)| {
            let mut c = Config::default();
            let (name, submit, publish, key, size, heartbeat) = relay;
            c.relay.name = name;
            c.relay.submit = submit;
            c.relay.publish = publish;
            c.relay.key = key.map(PathBuf::from);
            c.relay.max_message_size = size;
            c.relay.heartbeat = heartbeat;
            let (grants, keyrings, max_age, unsigned, dir) = trust;
            c.trust.grants = grants;
            c.trust.openpgp_keyrings = keyrings
                .into_iter()
                .map(|(k, v)| (k, PathBuf::from(v)))
                .collect::<BTreeMap<_, _>>();
            c.trust.max_age = max_age;
            c.trust.allow_unsigned = unsigned;
            c.trust.trusted_dir = PathBuf::from(dir);
            let (connect, rules, pools, metrics, grace, hwm) = trigger;
            c.trigger.connect = connect.into();
            c.trigger.rules = rules.into_iter().map(PathBuf::from).collect();
            c.trigger.pools = pools;
            c.trigger.metrics = metrics;
            c.trigger.shutdown_grace = grace;
            c.zmq.send_hwm = hwm;
            c
        })
}

#[test]
fn the_config_writer_reads_back_what_it_wrote() {
    proptest!(prop_support::config("prop_roundtrip", 300), |(config in any_config())| {
        let text = config_file::render(&config, &Config::default());
        let back: Config = parse_yaml(Path::new("hark.yaml"), &text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, config, "{}", text);
    });
}

/// A template written back from its parts: `$` doubled in literals, each reference as
/// `${name}`.
fn unparse(t: &Template, vars: &[&str]) -> String {
    t.parts()
        .iter()
        .map(|p| match p {
            Part::Lit(l) => l.replace('$', "$$"),
            Part::Sub(Ref::Path(path)) => format!("${{{path}}}"),
            Part::Sub(Ref::Var(i)) => format!("${{{}}}", vars[*i]),
        })
        .collect()
}

/// `data["key"]` with the key's `"` and `\` escaped.
fn quoted(key: &str) -> String {
    format!(
        "data[\"{}\"]",
        key.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

fn literal() -> impl Strategy<Value = String> {
    "[a-z $}{/.\"'\\\\-]{0,6}"
}

#[test]
fn templates_survive_parse_and_write_back() {
    let vars = ["repo", "suite"];
    let reference = prop_oneof![
        Just("${repo}".to_string()),
        Just("${topic}".to_string()),
        Just("${uuid}".to_string()),
        "data(\\.[a-z_]{1,4}|\\[[0-9]\\]){0,3}".prop_map(|p| format!("${{{p}}}")),
        any_text().prop_map(|k| format!("${{{}}}", quoted(&k))),
    ];
    proptest!(prop_support::config("prop_roundtrip", 1000), |(pieces in prop::collection::vec((literal(), reference), 0..5), tail in literal())| {
        let text: String = pieces.iter().map(|(l, r)| format!("{l}{r}")).collect::<String>() + &tail;
        let Ok(t) = Template::parse(&text, &vars) else {
            // A lone `${` from the literals may open a reference; that is the writer's
            // business only for templates that parse.
            return Ok(());
        };
        let again = unparse(&t, &vars);
        let t2 = Template::parse(&again, &vars)
            .map_err(|e| TestCaseError::fail(format!("{again:?} (from {text:?}): {e:?}")))?;
        prop_assert_eq!(format!("{:?}", t.parts()), format!("{:?}", t2.parts()), "{:?} -> {:?}", text, again);
    });
}

#[test]
fn quoted_keys_render_their_values() {
    proptest!(prop_support::config("prop_roundtrip", 500), |(entries in prop::collection::vec((any_text(), "[a-z0-9./ ]{0,8}", "[a-z]{0,3}"), 1..4))| {
        let mut data = serde_json::Map::new();
        let mut text = String::new();
        let mut expected = String::new();
        for (key, value, _) in &entries {
            data.insert(key.clone(), json!(value));
        }
        for (key, _, lit) in &entries {
            text.push_str(lit);
            text.push_str(&format!("${{{}}}", quoted(key)));
            expected.push_str(lit);
            expected.push_str(data[key].as_str().unwrap_or_default());
        }
        let event = Event::from_value(json!({"format": "1.0", "tag": "t.x", "uuid": "u",
            "time": "2026-01-01T00:00:00Z", "data": data}))
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let t = Template::parse(&text, &[])
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e:?}")))?;
        prop_assert_eq!(t.render(&[], &event), Ok(expected), "template {:?}", text);
    });
}
