//! The fuzz targets: each takes any bytes, feeds them to one of hark's parsers of outside
//! input, and panics (a crash, for AFL++) when a documented property breaks. A parser that
//! refuses the input is fine; a parser that panics, or accepts and then breaks a property,
//! is a finding. Inputs with several parts separate them with a NUL byte (frames) or the
//! first newline (the rest), so that the committed seeds stay readable.
//!
//! This file is also compiled into hark's test suite (tests/prop_fuzz_corpus.rs), which
//! replays every committed corpus file and crash through it: a crash once found stays a
//! regression test. It may use only `hark`, crates hark itself depends on (`lapin` for the
//! AMQP types, `axum`, `hmac`, `sha2`, `serde_json`, `chrono`) and `std`.

use std::cmp::Ordering;
use std::path::Path;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hark::admit::trust::TrustPolicy;
use hark::admit::Gate;
use hark::config::{HookKind, TrustConfig};
use hark::event::keys::{Keyring, SigningKey};
use hark::event::{canonical, parse_json, sign, Event};
use hark::http::hooks::Hook;
use hark::http::{api, api::Params, datagrepper};
use hark::rules::dpkg::{self, DebVersion};
use hark::rules::index::TopicIndex;
use hark::rules::path::FieldPath;
use hark::rules::set::RuleSet;
use hark::rules::template::{Template, Var};
use hark::sources::amqp;
use hark::topic::TopicPattern;
use hmac::{Hmac, Mac};
use lapin::message::Delivery;
use lapin::protocol::basic::parse_properties;
use serde_json::{json, Value};
use sha2::Sha256;

/// The signer whose key the frames target trusts: seeds signed with it reach the rules.
pub const SIGNER: &str = "fuzz-signer";
pub const SEED: [u8; 32] = [42; 32];

fn split_once_newline(data: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(data).ok()?;
    Some(text.split_once('\n').unwrap_or((text, "")))
}

/// A fixed event to render templates and match rules against.
fn sample_event() -> Event {
    Event::from_value(json!({
        "format": "1.0", "tag": "_lk.archive.package-upload-accepted", "uuid": "u-1",
        "time": "2026-01-01T00:00:00Z", "origin": "archive.example",
        "data": {"repo": "master", "suite": "unstable", "version": "1:2.0~rc1-3",
                 "list": ["a", "-b", "c d"], "n": 12, "deep": {"x": [{"y": "z"}]}, "": "empty",
                 "nul": "a\u{0}b", "obj": {"k": 1}}
    }))
    .expect("the sample event is valid")
}

/// Frames as received from a PUB socket, a submission and fedmsg pass-through, through
/// the same gate a relay and a trigger use (a trusted key, every topic granted, unsigned
/// allowed, no freshness limit to speak of).
pub fn frames(data: &[u8]) {
    let frames: Vec<Vec<u8>> = data.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    let key = SigningKey::from_seed(SIGNER, "0", &SEED).expect("32 bytes");
    let mut keyring = Keyring::default();
    keyring.insert(key.verify_key());
    let cfg = TrustConfig {
        allow_unsigned: true,
        max_age: std::time::Duration::from_secs(100 * 365 * 86_400),
        max_future: std::time::Duration::from_secs(100 * 365 * 86_400),
        ..TrustConfig::default()
    };
    let grants = vec![(SIGNER.to_string(), vec!["**".to_string()])];
    let policy = TrustPolicy::new(keyring, &grants, &cfg).expect("policy");
    let gate = Gate::new(policy, true, 1 << 20);
    let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("a time");
    let admitted = [
        gate.check_frames(frames.clone(), now, false).ok(),
        gate.check_frames(frames.clone(), now, true).ok(),
        frames
            .last()
            .and_then(|f| gate.check_submission(f.clone(), now).ok()),
    ];
    let _ = gate.check_fedmsg_passthrough(&frames);
    let _ = gate.submission_frame(frames.clone());
    for event in admitted.into_iter().flatten() {
        // An admitted event can always be written canonically and matched against rules.
        let bytes = canonical::to_vec(&event.body).expect("an admitted event serializes");
        assert!(parse_json(&bytes).is_ok(), "canonical bytes parse back");
        let _ = event.json_bytes();
    }
}

/// Canonical JSON: whatever parses is written, the writing parses back, and writing that
/// again gives the same bytes (a signature made and checked on either side agrees).
pub fn canonical(data: &[u8]) {
    let Ok(value) = parse_json(data) else {
        return;
    };
    let once = canonical::to_vec(&value).expect("a parsed value serializes");
    let finite = canonical::non_finite(&value).is_none();
    if !finite {
        // Only Infinity could be written: signing must refuse it.
        let mut event = json!({ "data": value });
        let key = SigningKey::from_seed("k", "0", &SEED).expect("32 bytes");
        assert!(matches!(
            sign::sign(&mut event, &key),
            Err(sign::SignError::NonFinite(_))
        ));
        return;
    }
    let again = parse_json(&once).unwrap_or_else(|e| {
        panic!(
            "canonical output does not parse: {e}: {}",
            String::from_utf8_lossy(&once)
        )
    });
    let twice = canonical::to_vec(&again).expect("serializes");
    assert_eq!(once, twice, "canonical JSON is not idempotent");
    if let Value::Object(_) = value {
        let signed = sign::signed_bytes(&value).expect("an object");
        let _ = parse_json(&signed).expect("signed bytes parse");
    }
}

/// Rule files: compile, build a rule set, match the sample event and render every rule.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = hark::rules::compile::parse_str(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let (set, _errors) = RuleSet::build(&[file]);
    let event = sample_event();
    let _ = set.explain(&event);
    for rule in set.matching(&event) {
        let _ = rule.render(&event);
    }
    for rule in set.rules() {
        let _ = rule.render(&event);
    }
}

/// Templates: line 1 names the rule's vars (comma-separated, each reading `data.<name>`),
/// the rest is the template. Parse, render, render as arguments.
pub fn templates(data: &[u8]) {
    let Some((names, text)) = split_once_newline(data) else {
        return;
    };
    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).take(8).collect();
    let vars: Vec<Var> = names
        .iter()
        .filter_map(|n| {
            Some(Var {
                name: n.to_string(),
                from: FieldPath::parse(&format!("data.{n}")).ok()?,
                pattern: None,
                default: None,
            })
        })
        .collect();
    let var_names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    let Ok(template) = Template::parse(text, &var_names) else {
        return;
    };
    let event = sample_event();
    let _ = template.render(&vars, &event);
    let mut args = Vec::new();
    let _ = template.render_args(&vars, &event, &mut args);
    for arg in &args {
        assert!(
            !arg.contains('\0'),
            "a rendered argument holds a NUL: {arg:?}"
        );
    }
    let _ = template.literal_prefix();
}

/// Topic patterns: line 1 is the pattern, the rest the topic. The automaton and the index
/// agree, and a topic that matches starts with the pattern's literal prefix (the ZeroMQ
/// subscription, which must never filter out a match).
pub fn topics(data: &[u8]) {
    let Some((pattern, topic)) = split_once_newline(data) else {
        return;
    };
    let Ok(p) = TopicPattern::parse(pattern) else {
        return;
    };
    let matched = p.matches(topic);
    let mut index = TopicIndex::new();
    index.insert(&p, 7);
    let mut found = Vec::new();
    index.lookup(topic, &mut found);
    assert_eq!(
        matched,
        found.contains(&7),
        "pattern {pattern:?} and its index disagree on {topic:?}"
    );
    if matched {
        assert!(
            topic.starts_with(&p.literal_prefix()),
            "{topic:?} matches {pattern:?} but lacks the prefix {:?}",
            p.literal_prefix()
        );
    }
    let _ = hark::topic::check_topic(topic);
}

/// Debian versions: line 1 and the rest. Comparison is antisymmetric and reflexive, and
/// parsing agrees with the comparison on what is a version.
pub fn dpkg(data: &[u8]) {
    let Some((a, b)) = split_once_newline(data) else {
        return;
    };
    let ab = dpkg::compare(a, b);
    let ba = dpkg::compare(b, a);
    assert_eq!(
        ab.clone().ok(),
        ba.ok().map(Ordering::reverse),
        "{a:?} against {b:?}"
    );
    for v in [a, b] {
        let parsed = DebVersion::parse(v);
        assert_eq!(parsed.is_ok(), DebVersion::check(v).is_none(), "{v:?}");
        if let Ok(parsed) = parsed {
            assert_eq!(dpkg::compare(v, v), Ok(Ordering::Equal));
            assert_eq!(parsed.compare_text(v), Some(Ordering::Equal));
            if let Ok(other) = DebVersion::parse(if v == a { b } else { a }) {
                assert_eq!(
                    Some(parsed.cmp(&other)),
                    dpkg::compare(v, other.as_str()).ok()
                );
            }
        }
    }
}

/// AMQP deliveries as the AMQP source maps them to events (`sources::amqp::to_event`): the
/// routing key up to the first NUL, then the basic properties as they are on the wire (the
/// content header's property flags and fields, parsed by lapin's own amq-protocol parser,
/// so the headers table may hold every AMQP field type), then the body. An event made is
/// the routing key's, keeps a non-empty message id, holds only finite numbers, and its frame
/// is the canonical envelope; the headers, written back as AMQP fields for the sinks and
/// read again, are stable after one such round.
pub fn amqp(data: &[u8]) {
    let Some(nul) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let Ok(key) = std::str::from_utf8(&data[..nul]) else {
        return;
    };
    if key.len() > 255 {
        return; // a routing key is an AMQP short string
    }
    let Ok((body, props)) = parse_properties(&data[nul + 1..]) else {
        return;
    };
    let mut d = Delivery::mock(1, "amq.topic".into(), key.into(), false, body.to_vec());
    d.properties = props;
    let Ok(event) = amqp::to_event("fuzz", &d) else {
        return;
    };
    assert_eq!(event.topic, key);
    if let Some(id) = d
        .properties
        .message_id()
        .as_ref()
        .filter(|id| !id.as_str().is_empty())
    {
        assert_eq!(event.uuid, id.as_str(), "the message id is the event's id");
    }
    assert!(
        canonical::non_finite(&event.body).is_none(),
        "an event holds a non-finite number"
    );
    let frame = event.json_bytes();
    let parsed = parse_json(&frame).expect("the event's frame parses");
    assert_eq!(
        canonical::to_vec(&parsed).expect("serializes"),
        frame.as_ref(),
        "the frame is canonical"
    );
    assert_eq!(
        canonical::to_vec(&event.body).expect("serializes"),
        frame.as_ref(),
        "the frame is the envelope"
    );
    if let Value::Object(headers) = &event.headers {
        let once = amqp::table_to_json(&amqp::json_to_table(headers));
        let Value::Object(once_map) = &once else {
            panic!("headers come back as {once}");
        };
        let twice = amqp::table_to_json(&amqp::json_to_table(once_map));
        assert_eq!(once, twice, "headers are not stable through AMQP fields");
    } else {
        panic!("headers are {}", event.headers);
    }
}

/// The hook's secret in the `http` target: the target signs each body with it, so that the
/// fuzzer reaches what a verified payload becomes.
const HOOK_SECRET: &[u8] = b"fuzz-secret";

/// HTTP: line 1 is a query string (`key=value` pairs separated by `&`, not percent-encoded:
/// the fuzzer writes any byte directly), as `/raw` and `/v1/events` get it; then header
/// lines `name: value` up to an empty line; the rest is a webhook body.
///
/// Both query parsers refuse or accept without panicking. Every kind of hook accepts the
/// body once it carries the hook's secret or signature, whatever else the headers say; a
/// JSON body becomes an event (or, holding a number beyond a double, a 400), and that event
/// is admitted by the relay's submission gate (the hook's signer trusted and granted
/// `_hark.hook.**`).
pub fn http(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (query, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let params = Params(
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    );
    let _ = datagrepper::raw_request(&params, 1_767_225_600_000);
    let _ = api::events_query(&params);

    // The body is the input's own bytes after the first empty line (not the lossy text).
    let body = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => &data[i + 2..],
        None => &[][..],
    };
    let head = rest.split("\n\n").next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let key = SigningKey::from_seed("hook-fuzz", "0", &SEED).expect("32 bytes");
    let mut keyring = Keyring::default();
    keyring.insert(key.verify_key());
    let grants = vec![("hook-fuzz".to_string(), vec!["_hark.hook.**".to_string()])];
    let policy = TrustPolicy::new(keyring, &grants, &TrustConfig::default()).expect("policy");
    let gate = Gate::new(policy, false, 1 << 20);
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET).expect("any key length");
    mac.update(body);
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let payload: Option<Value> = serde_json::from_slice(body).ok();
    for kind in [
        HookKind::Gitlab,
        HookKind::Github,
        HookKind::Forgejo,
        HookKind::Gitea,
        HookKind::Hmac,
    ] {
        let hook = Hook::new(
            "fuzz",
            kind,
            HOOK_SECRET.to_vec(),
            Some("X-Fuzz-Signature"),
            key.clone(),
        );
        let _ = hook.verify(&headers, body);
        let mut signed = headers.clone();
        let (name, value) = match kind {
            HookKind::Gitlab => (
                "x-gitlab-token",
                String::from_utf8_lossy(HOOK_SECRET).into(),
            ),
            HookKind::Hmac => ("x-fuzz-signature", format!("sha256={signature}")),
            _ => ("x-hub-signature-256", format!("sha256={signature}")),
        };
        signed.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("ASCII"),
        );
        assert!(
            hook.verify(&signed, body),
            "{kind:?} refuses its own secret"
        );
        let Some(payload) = payload.clone() else {
            continue;
        };
        let finite = canonical::non_finite(&payload).is_none();
        let event = match hook.event(&signed, payload) {
            Ok(event) => event,
            // A number JSON cannot carry is the forge's fault: a 400, not a 500.
            Err(e) if !finite && e.status.as_u16() == 400 => continue,
            Err(e) => panic!("{kind:?}: a verified payload is refused: {}", e.message),
        };
        let Ok(frame) = canonical::to_vec(&event) else {
            continue;
        };
        if frame.len() >= 1 << 20 {
            continue;
        }
        if let Err(e) = gate.check_submission(frame, chrono::Utc::now()) {
            panic!("{kind:?}: the relay refuses a hook's event: {e:?}");
        }
    }
}
