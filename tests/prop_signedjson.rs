//! Signatures against python-signedjson (Matrix's reference, what Laniakea's signing is
//! modelled on), both ways, over generated events: any data (tests/prop_support/json_gen.rs),
//! any signer name and key version, other signers' signatures and an `unsigned` block
//! beside it.
//! - hark signs, python-signedjson's `verify_signed_json` accepts; changed data it refuses.
//! - python-signedjson signs, `hark::event::sign::check` verifies; changed data is bad.

mod prop_support;

use hark::event::keys::{encode_base64, Keyring, SigningKey};
use hark::event::{canonical, parse_json, sign};
use prop_support::json_gen::json_text;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A Laniakea-shaped event around generated data, with what signing must leave alone:
/// another signer's signature and an `unsigned` block.
fn event() -> impl Strategy<Value = Value> {
    (json_text(), "[a-z][a-z0-9._-]{0,20}", prop::bool::ANY, prop::bool::ANY)
        .prop_filter_map("data within a double's range", |(data, tag, other, unsigned)| {
            let data = parse_json(data.as_bytes()).ok()?;
            if canonical::non_finite(&data).is_some() {
                return None;
            }
            let mut event = json!({"format": "1.0", "tag": tag, "uuid": "0b1e4a9e-6c0d-4d6e-9a57-3f1b2c3d4e5f",
                                   "time": "2026-01-01T00:00:00Z", "data": data});
            if other {
                event["signatures"] = json!({"someone-else": {"ed25519:x": "AAAA"}});
            }
            if unsigned {
                event["unsigned"] = json!({"relay": "r", "seq": 1});
            }
            Some(event)
        })
}

/// A signer name and key version as the key files allow them, and a seed.
fn key() -> impl Strategy<Value = SigningKey> {
    (
        "[A-Za-z0-9][A-Za-z0-9._-]{0,30}",
        "[A-Za-z0-9_]{1,8}",
        any::<[u8; 32]>(),
    )
        .prop_map(|(name, version, seed)| {
            SigningKey::from_seed(&name, &version, &seed).expect("a 32-byte seed")
        })
}

/// Some value in `event["data"]` changed, so the signed bytes change.
fn tampered(event: &Value) -> Value {
    let mut t = event.clone();
    t["data"] = json!({"was": t["data"].take(), "tampered": true});
    t
}

fn canonical_text(event: &Value) -> String {
    String::from_utf8(canonical::to_vec(event).expect("serializes")).expect("UTF-8")
}

#[test]
fn hark_signatures_verify_in_python_signedjson() {
    skip_without_reference!("hark_signatures_verify_in_python_signedjson");
    proptest!(prop_support::config("prop_signedjson", 150), |(mut ev in event(), key in key())| {
        sign::sign(&mut ev, &key).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let verify_key = encode_base64(key.key.verifying_key().as_bytes());
        let mut reference = prop_support::reference().map_err(TestCaseError::fail)?;
        let mut ask = |ev: &Value| reference.ask(&json!({"op": "verify", "event": canonical_text(ev),
            "verify_key": verify_key, "name": key.name, "version": key.version}));
        prop_assert_eq!(ask(&ev), Ok(json!(true)), "event {}", ev);
        prop_assert_eq!(ask(&tampered(&ev)), Ok(json!(false)), "tampered {}", ev);
    });
}

#[test]
fn python_signedjson_signatures_verify_in_hark() {
    skip_without_reference!("python_signedjson_signatures_verify_in_hark");
    proptest!(prop_support::config("prop_signedjson", 150), |(ev in event(), key in key())| {
        let seed = encode_base64(key.key.as_bytes());
        let signed = prop_support::reference().map_err(TestCaseError::fail)?
            .ask(&json!({"op": "sign", "event": canonical_text(&ev), "seed": seed,
                         "name": key.name, "version": key.version}))
            .map_err(TestCaseError::fail)?;
        let signed: Value = parse_json(signed.as_str().unwrap_or_default().as_bytes())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut keyring = Keyring::default();
        keyring.insert(key.verify_key());
        let report = sign::check(&signed, &keyring);
        prop_assert_eq!(&report.verified, &vec![key.name.clone()], "{:?} for {}", report, signed);
        prop_assert!(report.bad.is_empty(), "{:?}", report);
        // Signing in hark gives the very same signature (Ed25519 is deterministic).
        let mut ours = ev.clone();
        sign::sign(&mut ours, &key).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&ours["signatures"][&key.name], &signed["signatures"][&key.name]);
        let report = sign::check(&tampered(&signed), &keyring);
        prop_assert!(report.verified.is_empty() && report.bad.len() == 1, "{:?}", report);
    });
}
