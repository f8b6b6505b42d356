//! Debian version ordering against dpkg itself: generated version pairs (epochs, tildes,
//! letters, digit runs with leading zeros, `+`, `.`, `-`, `:` in the upstream part) are
//! compared by `hark::rules::dpkg::compare` and by `dpkg --compare-versions` (through
//! tests/peers/reference.py, batched), and must agree; so must what each refuses, for
//! strings with blanks, odd characters and misplaced colons.

mod prop_support;

use std::cmp::Ordering;

use hark::rules::dpkg;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A well-formed version, from an alphabet small enough that equal and near-equal pairs
/// are common.
fn version() -> impl Strategy<Value = String> {
    let run = "(0{0,2}[0-9]{1,3}|[a-cz]{1,2}|~{1,2}|[.+])";
    (
        prop::option::of("0{0,2}[0-9]{1,2}"),
        proptest::string::string_regex(&format!("[0-9]{run}{{0,5}}")).expect("regex"),
        prop::option::of(proptest::string::string_regex(&format!("{run}{{1,4}}")).expect("regex")),
        prop::option::of(
            proptest::string::string_regex(&format!("[-:]{run}{{1,2}}")).expect("regex"),
        ),
    )
        .prop_map(|(epoch, upstream, revision, middle)| {
            let mut v = String::new();
            if let Some(e) = &epoch {
                v.push_str(e);
                v.push(':');
            }
            v.push_str(&upstream);
            // `-` inside the upstream part needs a revision after it; `:` needs an epoch.
            if let (Some(m), Some(_)) = (&middle, &revision) {
                if !m.starts_with(':') || epoch.is_some() {
                    v.push_str(m);
                }
            }
            if let Some(r) = revision {
                v.push('-');
                v.push_str(&r);
            }
            v
        })
}

/// `a` and a version close to it: the same with a suffix or a digit changed, or another.
fn pair() -> impl Strategy<Value = (String, String)> {
    (version(), version(), 0u8..5, "[0-9a~.+]{1,2}").prop_map(|(a, b, how, bit)| match how {
        0 => (a.clone(), format!("{a}{bit}")),
        1 => (a.clone(), a.replacen('1', "01", 1)),
        2 => (a.clone(), a.clone()),
        _ => (a, b),
    })
}

/// Anything short: blanks, control characters, colons and dashes anywhere, non-ASCII.
/// Not the empty string: `dpkg --compare-versions` alone reads `""` as the blank version
/// (lowest of all, the CLI's special case for a package never installed), where dpkg's
/// version parser, and hark with it, refuses it as empty.
fn junk() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9a:~.+\\- \t\n\r\u{b}\u{c}!_é]{1,8}").expect("regex")
}

/// Compare every pair with dpkg (one request) and with hark.
fn agree(pairs: &[(String, String)]) -> Result<(), TestCaseError> {
    let Ok(mut reference) = prop_support::reference() else {
        return Ok(());
    };
    let answers = reference
        .ask(&json!({"op": "dpkg", "pairs": pairs}))
        .map_err(TestCaseError::fail)?;
    drop(reference);
    let answers = answers.as_array().cloned().unwrap_or_default();
    prop_assert_eq!(answers.len(), pairs.len());
    for ((a, b), expected) in pairs.iter().zip(answers) {
        let hark = dpkg::compare(a, b);
        let expected = match expected {
            Value::Null => None,
            v => Some(match v.as_i64() {
                Some(-1) => Ordering::Less,
                Some(0) => Ordering::Equal,
                _ => Ordering::Greater,
            }),
        };
        prop_assert_eq!(
            hark.clone().ok(),
            expected,
            "{:?} against {:?}: hark {:?}",
            a,
            b,
            hark
        );
    }
    Ok(())
}

#[test]
fn versions_order_as_dpkg_orders_them() {
    skip_without_reference!("versions_order_as_dpkg_orders_them");
    proptest!(prop_support::config("prop_dpkg", 60), |(pairs in prop::collection::vec(pair(), 10))| {
        agree(&pairs)?;
    });
}

#[test]
fn versions_are_refused_as_dpkg_refuses_them() {
    skip_without_reference!("versions_are_refused_as_dpkg_refuses_them");
    proptest!(prop_support::config("prop_dpkg", 30), |(pairs in prop::collection::vec((junk(), version()), 10))| {
        agree(&pairs)?;
    });
}
