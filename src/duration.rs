//! Human durations in config and rule files: `30s`, `10m`, `2h`, `1h30m`, `500ms`, `1d`,
//! exactly the forms docs/rules.md documents, parsed and written back.
//!
//! A general-purpose parser (humantime) was used before and accepted far more: `30M` was 30
//! months, `1y` a year, `2w` two weeks. An admin who meant minutes got a setting a
//! thousand times too long without a word, so anything outside the documented units is
//! refused here, with what to write instead.

use std::time::Duration;

/// The units, longest first, as they must appear in a combined duration.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

const HINT: &str = "write e.g. 500ms, 30s, 10m, 2h, 1d or 1h30m";

/// Parse a duration, naming what was expected on failure.
pub fn parse(text: &str) -> Result<Duration, String> {
    parse_millis(text.trim())
        .map(Duration::from_millis)
        .map_err(|why| format!("invalid duration {text:?}: {why} ({HINT})"))
}

/// Why `text` is not a duration, as the middle part of the message.
fn parse_millis(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen: each later one must be smaller.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let what = match rest.chars().next() {
                Some('-') => "a duration cannot be negative".to_string(),
                Some(c) if c.is_whitespace() => "no spaces inside a duration".to_string(),
                Some(c) => format!("expected a number, found {c:?}"),
                None => "expected a number".to_string(),
            };
            return Err(what);
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => format!("{number:?} has no unit"),
                Some('.') | Some(',') => "only whole numbers (write 1h30m, not 1.5h)".into(),
                Some(c) if c.is_whitespace() => "no spaces inside a duration".into(),
                Some(c) => format!("unexpected {c:?}"),
            });
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(unknown_unit(unit));
        };
        if let Some(previous) = last.filter(|l| index <= *l) {
            return Err(format!(
                "units must each appear once, largest first ({unit:?} after {:?})",
                UNITS[previous].0
            ));
        }
        last = Some(index);
        let too_large = || "too large".to_string();
        let n: u64 = number.parse().map_err(|_| too_large())?;
        let part = n.checked_mul(UNITS[index].1).ok_or_else(too_large)?;
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = after;
    }
    Ok(total)
}

fn unknown_unit(unit: &str) -> String {
    let known = "the units are ms, s, m, h and d";
    match unit {
        "M" => format!("unknown unit \"M\" (minutes are m; months are not a unit here); {known}"),
        "y" | "Y" | "yr" | "year" | "years" | "w" | "W" | "week" | "weeks" | "month" | "months" => {
            format!("unknown unit {unit:?} (write days, e.g. 7d); {known}")
        }
        "S" | "sec" | "secs" | "second" | "seconds" => {
            format!("unknown unit {unit:?} (seconds are s); {known}")
        }
        "min" | "mins" | "minute" | "minutes" => {
            format!("unknown unit {unit:?} (minutes are m); {known}")
        }
        "H" | "hr" | "hrs" | "hour" | "hours" => {
            format!("unknown unit {unit:?} (hours are h); {known}")
        }
        "D" | "day" | "days" => format!("unknown unit {unit:?} (days are d); {known}"),
        "MS" | "msec" | "msecs" => format!("unknown unit {unit:?} (milliseconds are ms); {known}"),
        _ => format!("unknown unit {unit:?}; {known}"),
    }
}

/// Render a duration the way it would be written in a file: the documented units only, so
/// that what hark writes (the packaged hark.yaml, `rules check`) parses back. Anything
/// below a millisecond is dropped.
pub fn format(d: Duration) -> String {
    let mut left = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if left == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let n = left / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            left %= size;
        }
    }
    out
}

/// serde helper: `#[serde(with = "crate::duration::serde_text")]`.
pub mod serde_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(d) => panic!("{text:?} was accepted as {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn forms_admins_write() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse("1d2h3m4s5ms").unwrap(),
            Duration::from_millis(93_784_005)
        );
        // YAML and flags may carry surrounding blanks.
        assert_eq!(parse(" 30s\n").unwrap(), Duration::from_secs(30));
        assert!(parse("soon").unwrap_err().contains("1h30m"));
    }

    #[test]
    fn months_years_and_weeks_are_refused() {
        let e = refused("30M");
        assert!(e.contains("minutes are m") && e.contains("1h30m"), "{e}");
        let e = refused("1y");
        assert!(e.contains("7d"), "{e}");
        let e = refused("2w");
        assert!(e.contains("7d"), "{e}");
        refused("1month");
        refused("1year");
    }

    #[test]
    fn other_units_and_spellings_are_refused() {
        for text in [
            "30sec", "5min", "1hour", "2days", "10S", "1H", "5us", "7ns", "1D",
        ] {
            let e = refused(text);
            assert!(e.contains("ms, s, m, h and d"), "{text}: {e}");
        }
    }

    #[test]
    fn empty_negative_bare_and_malformed_are_refused() {
        assert!(refused("").contains("empty"));
        assert!(refused("   ").contains("empty"));
        assert!(refused("-5s").contains("negative"));
        assert!(refused("30").contains("no unit"));
        assert!(refused("0").contains("no unit"));
        assert!(refused("1.5h").contains("whole numbers"));
        assert!(refused("1h 30m").contains("no spaces"));
        assert!(refused("+5s").contains("expected a number"));
        assert!(refused("h").contains("expected a number"));
        assert!(refused("30m1h").contains("largest first"));
        assert!(refused("1h1h").contains("largest first"));
        assert!(refused("5s!").contains("expected a number"));
    }

    #[test]
    fn overflow_is_refused() {
        assert!(refused("99999999999999999999s").contains("too large"));
        assert!(refused("18446744073709551615d").contains("too large"));
        // Each part fits; their sum does not.
        let max = u64::MAX / 86_400_000;
        assert!(refused(&format!("{max}d{max}h")).contains("too large"));
    }

    #[test]
    fn what_is_written_parses_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_secs(5400),
            Duration::from_secs(7 * 86_400),
            Duration::from_millis(93_784_005),
        ] {
            let text = format(d);
            assert_eq!(parse(&text).unwrap(), d, "{text}");
        }
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_micros(1500)), "1ms");
    }
}
