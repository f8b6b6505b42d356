//! Canonical JSON, byte-identical to CPython's
//! `json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(',', ':'))`.
//!
//! This is what Laniakea and python-signedjson sign, so every signature hark makes or checks
//! goes through here. Three things differ from serde_json's compact writer:
//! - keys are sorted by code point (a `BTreeMap`, as long as nobody enables serde_json's
//!   `preserve_order`; a unit test below guards that);
//! - integers keep their exact text, however large (serde_json's `arbitrary_precision`);
//! - other numbers are written as Python's `repr(float)` (`1e-05`, `1e+16`, `10000000000.0`),
//!   and numbers too large for a double become `Infinity` as in Python.
//!
//! String escaping is serde_json's, which matches Python: short escapes for `\b \f \n \r \t
//! \" \\`, `\u00XX` in lowercase hex for other control characters, everything else raw.

use serde_json::{Number, Value};

/// The first number in `value` that canonical JSON could only write as `Infinity`: a
/// non-integer beyond a double's range (`1e400`). Python writes it so, but no JSON parser
/// reads that back, so hark refuses such an event instead of emitting it.
pub fn non_finite(value: &Value) -> Option<&Number> {
    match value {
        Value::Number(n) => {
            let text = n.as_str();
            (!is_json_integer(text) && text.parse::<f64>().is_ok_and(|f| !f.is_finite()))
                .then_some(n)
        }
        Value::Array(items) => items.iter().find_map(non_finite),
        Value::Object(map) => map.values().find_map(non_finite),
        _ => None,
    }
}

/// Serialize `value` canonically.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out)
}

/// Serialize `value` canonically, leaving out the top-level keys in `skip` (used for the
/// signed form, which excludes `signatures` and `unsigned`).
pub fn to_vec_without(value: &Value, skip: &[&str]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    match value {
        Value::Object(map) => {
            out.push(b'{');
            let mut first = true;
            for (key, item) in map.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut out, key)?;
                out.push(b':');
                write_value(&mut out, item)?;
            }
            out.push(b'}');
        }
        other => write_value(&mut out, other)?,
    }
    Ok(out)
}

/// An object's canonical JSON with one top-level key left out and a gap where that key
/// sorts, so that its value can be put in later without serializing the rest again: the
/// relay's workers serialize an event once, and the socket thread only splices in the
/// `unsigned` stamp, whose seq it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gapped {
    /// `{` and the members before the gap, without a trailing comma.
    head: Vec<u8>,
    /// The members after the gap and `}`.
    tail: Vec<u8>,
    /// The left-out key as a JSON string.
    key: Vec<u8>,
}

impl Gapped {
    /// `None` unless `value` is an object. Any `key` already in it is left out.
    pub fn new(value: &Value, key: &str) -> Result<Option<Gapped>, serde_json::Error> {
        let Value::Object(map) = value else {
            return Ok(None);
        };
        let mut head = Vec::with_capacity(256);
        let mut tail = Vec::with_capacity(64);
        head.push(b'{');
        let (mut head_empty, mut tail_empty) = (true, true);
        for (k, item) in map {
            let (out, empty) = match k.as_str().cmp(key) {
                std::cmp::Ordering::Less => (&mut head, &mut head_empty),
                std::cmp::Ordering::Equal => continue,
                std::cmp::Ordering::Greater => (&mut tail, &mut tail_empty),
            };
            if !std::mem::replace(empty, false) {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k)?;
            out.push(b':');
            write_value(out, item)?;
        }
        tail.push(b'}');
        Ok(Some(Gapped {
            head,
            tail,
            key: serde_json::to_vec(key)?,
        }))
    }

    /// The whole object's canonical JSON with `value` (itself canonical JSON) at the gap.
    pub fn fill(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.head.len() + self.tail.len() + self.key.len() + value.len() + 3,
        );
        out.extend_from_slice(&self.head);
        if self.head.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&self.key);
        out.push(b':');
        out.extend_from_slice(value);
        if self.tail.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), serde_json::Error> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => serde_json::to_writer(&mut *out, s)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(out, item)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    let text = n.as_str();
    if is_json_integer(text) {
        // Python parses these as int and prints them back exactly; only `-0` changes.
        if text == "-0" {
            out.push(b'0');
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        return;
    }
    match text.parse::<f64>() {
        Ok(f) => out.extend_from_slice(python_float_repr(f).as_bytes()),
        // serde_json only produces valid number text, so this cannot happen in practice;
        // keeping the text is the least surprising fallback.
        Err(_) => out.extend_from_slice(text.as_bytes()),
    }
}

fn is_json_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Python's `float.__repr__` as `json.dumps` writes it (`Infinity` for overflow).
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digit count, like Python's repr, but
    // breaks exact ties upwards where Python rounds half to even; re-rendering with that
    // many digits through `{:.N e}` rounds the exact value to even.
    let shortest = format!("{:e}", f.abs());
    let digit_count = shortest
        .split('e')
        .next()
        .unwrap_or("")
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    let sci = format!("{:.*e}", digit_count.saturating_sub(1), f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Python switches to exponent notation when the decimal exponent is < -4 or >= 16.
    let body = if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (lead, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{lead}{frac}e{exp_sign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        String::from_utf8(to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn keys_sort_by_code_point_even_with_preserve_order_guard() {
        // Fails if any crate in the graph turns on serde_json's preserve_order.
        assert_eq!(canon(r#"{"b":"2","a":"1"}"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(canon(r#"{"本":2,"日":1}"#), r#"{"日":1,"本":2}"#);
        assert_eq!(canon(r#"{"😀":1,"Ａ":2}"#), r#"{"Ａ":2,"😀":1}"#);
    }

    #[test]
    fn numbers_beyond_a_double_are_found_wherever_they_are() {
        let v = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        let beyond = |t: &str| {
            non_finite(&v(t)).is_some_and(|n| n.as_str().parse::<f64>().is_ok_and(f64::is_infinite))
        };
        assert!(beyond(r#"{"a":[1,{"b":-1e400}]}"#));
        assert!(beyond("1e309"));
        for fine in [
            "1e308",
            "1e-400",
            "340282366920938463463374607431768211456",
            r#"{"s":"1e400"}"#,
        ] {
            assert_eq!(non_finite(&v(fine)), None, "{fine}");
        }
    }

    #[test]
    fn python_float_forms() {
        for (input, python) in [
            ("0.1", "0.1"),
            ("1e-5", "1e-05"),
            ("1e16", "1e+16"),
            ("-0.0", "-0.0"),
            ("1e10", "10000000000.0"),
            ("1.0", "1.0"),
            ("0.0001", "0.0001"),
            ("123456789012345678", "123456789012345678"),
            ("1.2345678901234568e17", "1.2345678901234568e+17"),
            ("2.5e-07", "2.5e-07"),
            ("1e400", "Infinity"),
            ("-1e400", "-Infinity"),
            ("-0", "0"),
            ("1E5", "100000.0"),
            ("1e21", "1e+21"),
            // Exact shortest-digit ties round half to even, as in Python.
            ("2056678060867990.25", "2056678060867990.2"),
            ("1221254104428268.25", "1221254104428268.2"),
            ("1000000000000000.0", "1000000000000000.0"),
            (
                "340282366920938463463374607431768211456",
                "340282366920938463463374607431768211456",
            ),
        ] {
            assert_eq!(canon(input), python, "input {input}");
        }
    }

    #[test]
    fn escapes_match_python() {
        assert_eq!(
            canon(r#"["\u0001\u001f\u007f\b\f\n\r\t\"\\/\u2028"]"#),
            "[\"\\u0001\\u001f\u{7f}\\b\\f\\n\\r\\t\\\"\\\\/\u{2028}\"]"
        );
    }

    #[test]
    fn a_gapped_object_filled_is_the_object_with_that_key_set() {
        let stamp: Value = serde_json::from_str(r#"{"seq":7,"relay":"r\u00e9"}"#).unwrap();
        let stamp_bytes = to_vec(&stamp).unwrap();
        for body in [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"z":[1,2.5e-7]}"#,
            r#"{"a":{"unsigned":1},"z":"x"}"#,
            r#"{"data":{"k":"v"},"signatures":{"s":{"ed25519:0":"x"}},"tag":"t","time":"now","unsigned":{"seq":1,"old":true},"uuid":"u"}"#,
            r#"{"unsigned":null}"#,
            r#"{"unsigned":null,"uuid":"u"}"#,
            r#"{"tag":"t","unsigned":3}"#,
        ] {
            let mut value: Value = serde_json::from_str(body).unwrap();
            let gapped = Gapped::new(&value, "unsigned").unwrap().unwrap();
            value
                .as_object_mut()
                .unwrap()
                .insert("unsigned".into(), stamp.clone());
            assert_eq!(
                String::from_utf8(gapped.fill(&stamp_bytes)).unwrap(),
                String::from_utf8(to_vec(&value).unwrap()).unwrap(),
                "{body}"
            );
        }
        assert_eq!(Gapped::new(&Value::from(1), "unsigned").unwrap(), None);
    }

    #[test]
    fn skip_leaves_out_top_level_keys_only() {
        let v: Value = serde_json::from_str(
            r#"{"a":{"signatures":1},"signatures":{"x":{}},"unsigned":{"seq":1},"z":2}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(to_vec_without(&v, &["signatures", "unsigned"]).unwrap()).unwrap(),
            r#"{"a":{"signatures":1},"z":2}"#
        );
    }
}
