//! Generators of JSON *text* for the property tests: not values, so that every way a sender
//! may write the same value (escapes, exponents, whitespace, duplicate keys) reaches the
//! parser. Inputs are RFC 8259 JSON: no NaN/Infinity tokens, no lone surrogates (CPython
//! accepts them, serde_json refuses them, and neither could be signed), nesting below
//! serde_json's limit of 128.
#![allow(dead_code)]

use proptest::prelude::*;

/// Whitespace JSON allows between tokens.
pub fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n"), 1 => Just("\t"), 1 => Just("\r\n  ")]
}

/// One character of a string, as JSON text: raw where JSON allows it, or escaped in any of
/// the ways a sender may write it (short escapes, `\u` in either case, surrogate pairs).
pub fn json_char() -> impl Strategy<Value = String> {
    let interesting = prop_oneof![
        (0u32..0x20), // controls: must be escaped
        Just(0x22),
        Just(0x5c),
        Just(0x2f), // " \ /
        Just(0x7f),
        (0x80u32..0xa0), // DEL and C1: raw in Python's output
        Just(0xad),
        Just(0x2028),
        Just(0x2029),
        Just(0xfeff),
        Just(0xfffe),
        Just(0xffff),
        (0xe000u32..0xf900),    // private use
        (0x10000u32..0x110000), // non-BMP
        (0x20u32..0x7f),
        (0xa0u32..0xd800),
    ];
    (interesting, 0u8..4).prop_map(|(cp, how)| {
        let c = char::from_u32(cp).expect("no surrogates generated");
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must_escape = cp < 0x20 || c == '"' || c == '\\';
        let unicode = |upper: bool| {
            let mut buf = [0u16; 2];
            c.encode_utf16(&mut buf)
                .iter()
                .map(|u| {
                    if upper {
                        format!("\\u{u:04X}")
                    } else {
                        format!("\\u{u:04x}")
                    }
                })
                .collect::<String>()
        };
        match how {
            0 if !must_escape => c.to_string(),
            1 if short.is_some() => short.unwrap_or_default().to_string(),
            2 => unicode(true),
            _ => unicode(false),
        }
    })
}

pub fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec(json_char(), 0..12).prop_map(|cs| format!("\"{}\"", cs.concat()))
}

/// Integers of any length (beyond u64 and i128), `-0`, and exponents without a fraction.
pub fn integer() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        Just("-0".to_string()),
        ("-?[1-9][0-9]{0,80}").prop_map(|s| s),
        (1u64..10, 0i32..40, prop::bool::ANY)
            .prop_map(|(m, e, upper)| format!("{m}{}{e}", if upper { "E" } else { "e" })),
    ]
}

/// Floats at the edges of Python's `repr`.
pub fn float() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any finite double, written shortest or with all 17 digits.
        any::<u64>()
            .prop_map(f64::from_bits)
            .prop_filter("finite", |f| f.is_finite())
            .prop_flat_map(|f| prop_oneof![Just(format!("{f:e}")), Just(format!("{f:.16e}"))]),
        // Subnormals and the smallest normals.
        (1u64..(1 << 52)).prop_map(|b| format!("{:e}", f64::from_bits(b))),
        (0u64..4).prop_map(|b| format!("{:e}", f64::from_bits((1 << 52) + b))),
        // Powers of ten across the whole range, and around repr's switch to exponents
        // (1e-5, 1e16), written several ways.
        (-330i32..312).prop_map(|e| format!("1e{e}")),
        (-6i32..20).prop_map(|e| format!("{}1.0e{e}", if e % 2 == 0 { "-" } else { "" })),
        (0usize..22).prop_map(|z| format!("1{}.0", "0".repeat(z))),
        (1usize..8).prop_map(|z| format!("0.{}1", "0".repeat(z))),
        // Exact ties between two shortest digit strings: n + 1/4 or 3/4 where doubles are a
        // quarter apart (2^50..2^51), and n + 1/2 where they are a half apart.
        ((1u64 << 50)..(1u64 << 51), prop::bool::ANY)
            .prop_map(|(n, q)| format!("{n}.{}", if q { "25" } else { "75" })),
        ((1u64 << 51)..(1u64 << 52)).prop_map(|n| format!("{n}.5")),
        // Decimal text with more digits than a double holds.
        ("-?(0|[1-9][0-9]{0,24})\\.[0-9]{1,25}([eE][-+]?[0-9]{1,3})?").prop_map(|s| s),
        // Beyond a double: CPython writes Infinity, hark must refuse.
        (309i32..1000, prop::bool::ANY)
            .prop_map(|(e, neg)| format!("{}1.5e{e}", if neg { "-" } else { "" })),
        Just("1.7976931348623158e308".to_string()),
        Just("1.7976931348623159e308".to_string()),
    ]
}

pub fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("null".to_string()),
        1 => Just("true".to_string()),
        1 => Just("false".to_string()),
        2 => integer(),
        3 => float(),
        3 => json_string(),
    ]
}

/// JSON text of nested arrays and objects (duplicate keys included: both sides keep the
/// last one), with varied whitespace.
pub fn json_text() -> impl Strategy<Value = String> {
    scalar().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((json_string(), ws(), inner), 0..6).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", items.join(","))
            }),
        ]
    })
}

/// Deep nesting: up to serde_json's recursion limit (128 levels).
pub fn deep_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::bool::ANY, json_string()), 1..127),
        scalar(),
    )
        .prop_map(|(levels, leaf)| {
            let mut text = leaf;
            for (array, key) in levels {
                text = if array {
                    format!("[{text},0]")
                } else {
                    format!("{{{key}:{text},\"~\":1}}")
                };
            }
            text
        })
}
