//! Canonical JSON against CPython, differentially: generated JSON texts (deep nesting, every
//! escape written every way, non-BMP characters raw and as surrogate pairs, integers of any
//! length, floats at the edges of `repr`: subnormals, powers of ten, shortest-digit ties,
//! numbers beyond a double) are serialized by `hark::event::canonical` and by CPython's
//! `json.dumps(sort_keys=True, ensure_ascii=False, separators=(',', ':'))` in one long-lived
//! process, and must be byte-identical. Where CPython could only write `Infinity`, hark must
//! refuse to sign (`canonical::non_finite`, `sign::checked_bytes`), never emit.

mod prop_support;

use hark::event::{canonical, parse_json, sign};
use prop_support::json_gen::{deep_text, float, integer, json_string, json_text};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Checks one text against CPython.
fn agree(text: &str) -> Result<(), TestCaseError> {
    let Ok(mut reference) = prop_support::reference() else {
        return Ok(());
    };
    let python = reference.ask(&json!({"op": "canon", "text": text}));
    drop(reference);
    let value: Value = parse_json(text.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("hark refused {text:?}: {e}")))?;
    let hark = canonical::to_vec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match python {
        Ok(Value::String(expected)) => {
            prop_assert!(
                canonical::non_finite(&value).is_none(),
                "hark calls {text:?} non-finite; CPython wrote {expected:?}"
            );
            prop_assert_eq!(String::from_utf8_lossy(&hark), expected, "input {:?}", text);
        }
        Err(why) if why.contains("Out of range float") => {
            // CPython would write Infinity; hark must refuse to sign it.
            prop_assert!(
                canonical::non_finite(&value).is_some(),
                "CPython found a non-finite number in {text:?}, hark did not"
            );
            let mut event = json!({"data": value});
            let key = hark::event::keys::SigningKey::from_seed("t", "0", &[7; 32])
                .map_err(TestCaseError::fail)?;
            prop_assert!(matches!(
                sign::sign(&mut event, &key),
                Err(sign::SignError::NonFinite(_))
            ));
        }
        other => prop_assert!(false, "CPython answered {other:?} for {text:?}"),
    }
    Ok(())
}

#[test]
fn canonical_json_is_cpythons() {
    skip_without_reference!("canonical_json_is_cpythons");
    proptest!(prop_support::config("prop_canonical", 400), |(text in json_text())| {
        agree(&text)?;
    });
}

#[test]
fn deep_nesting_is_cpythons() {
    skip_without_reference!("deep_nesting_is_cpythons");
    proptest!(prop_support::config("prop_canonical", 60), |(text in deep_text())| {
        agree(&text)?;
    });
}

#[test]
fn every_number_form_is_cpythons() {
    skip_without_reference!("every_number_form_is_cpythons");
    proptest!(prop_support::config("prop_canonical", 1500), |(n in prop_oneof![integer(), float()])| {
        agree(&n)?;
        agree(&format!("[{n}]"))?;
    });
}

#[test]
fn every_character_is_cpythons() {
    skip_without_reference!("every_character_is_cpythons");
    proptest!(prop_support::config("prop_canonical", 300), |(key in json_string(), s in json_string())| {
        agree(&format!("{{{key}:{s},\"a\":{s}}}"))?;
    });
}
