//! Debian version ordering, as `dpkg --compare-versions` defines it: epoch first
//! (numerically), then the upstream version and the revision, each compared by dpkg's
//! `verrevcmp` (`~` sorts before everything, even the end of the string; letters sort
//! before non-letters; digit runs compare numerically).
//!
//! Parsing follows dpkg's `parseversion`: what dpkg refuses is an error here; what dpkg only
//! warns about (a version not starting with a digit, odd characters) is accepted and
//! compared the way dpkg compares it.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version `[epoch:]upstream[-revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion {
    /// The version as written, without surrounding blanks.
    text: String,
    epoch: u32,
    /// Byte ranges of the upstream version and the revision within `text`.
    upstream: (usize, usize),
    revision: (usize, usize),
}

/// A version borrowed from its text: what comparisons work on, so that comparing an
/// event's version against a rule's allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts<'a> {
    epoch: u32,
    upstream: &'a str,
    revision: &'a str,
}

/// Why dpkg would refuse a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    Empty,
    EmbeddedSpaces,
    EpochEmpty,
    EpochNotNumber,
    EpochTooBig,
    EpochNegative,
    NothingAfterColon,
    RevisionEmpty,
    UpstreamEmpty,
}

impl Invalid {
    fn message(self, text: &str) -> String {
        match self {
            Invalid::Empty => "version string is empty".into(),
            Invalid::EmbeddedSpaces => format!("version {text:?} has embedded spaces"),
            Invalid::EpochEmpty => format!("epoch in version {text:?} is empty"),
            Invalid::EpochNotNumber => format!("epoch in version {text:?} is not a number"),
            Invalid::EpochNegative => format!("epoch in version {text:?} is negative"),
            Invalid::EpochTooBig => format!("epoch in version {text:?} is too big"),
            Invalid::NothingAfterColon => format!("nothing after colon in version {text:?}"),
            Invalid::RevisionEmpty => format!("revision in version {text:?} is empty"),
            Invalid::UpstreamEmpty => format!("upstream version in {text:?} is empty"),
        }
    }
}

/// dpkg's `c_isblank`: space and tab only. A newline, `\r`, `\v` or `\f` is not trimmed
/// but compared as a character (dpkg warns about it and goes on).
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Split as dpkg's `parseversion` does, refusing what it refuses.
fn parts(text: &str) -> Result<Parts<'_>, Invalid> {
    // dpkg strips surrounding blanks, then refuses embedded ones.
    let trimmed = text.trim_matches(is_blank);
    if trimmed.is_empty() {
        return Err(Invalid::Empty);
    }
    if trimmed.contains(is_blank) {
        return Err(Invalid::EmbeddedSpaces);
    }
    let (epoch, rest) = match trimmed.split_once(':') {
        Some((epoch, rest)) => {
            // dpkg reads the epoch with strtol(3): leading white space (blanks were
            // refused above, so \n \r \v \f) and a sign are part of it.
            let number = epoch.trim_start_matches(['\n', '\r', '\u{b}', '\u{c}']);
            let (negative, digits) = match number.as_bytes().first() {
                Some(b'-') => (true, &number[1..]),
                Some(b'+') => (false, &number[1..]),
                _ => (false, number),
            };
            let numeric = digits.bytes().take_while(u8::is_ascii_digit).count();
            if numeric == 0 {
                return Err(Invalid::EpochEmpty);
            }
            if numeric < digits.len() {
                return Err(Invalid::EpochNotNumber);
            }
            let epoch: u32 = digits
                .parse::<u64>()
                .ok()
                .and_then(|e| u32::try_from(e).ok())
                .filter(|e| *e <= i32::MAX as u32)
                .ok_or(Invalid::EpochTooBig)?;
            if negative && epoch > 0 {
                return Err(Invalid::EpochNegative);
            }
            if rest.is_empty() {
                return Err(Invalid::NothingAfterColon);
            }
            (epoch, rest)
        }
        None => (0, trimmed),
    };
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((_, "")) => return Err(Invalid::RevisionEmpty),
        Some((up, rev)) => (up, rev),
        None => (rest, ""),
    };
    if upstream.is_empty() {
        return Err(Invalid::UpstreamEmpty);
    }
    Ok(Parts {
        epoch,
        upstream,
        revision,
    })
}

fn cmp_parts(a: &Parts<'_>, b: &Parts<'_>) -> Ordering {
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| verrevcmp(a.upstream.as_bytes(), b.upstream.as_bytes()))
        .then_with(|| verrevcmp(a.revision.as_bytes(), b.revision.as_bytes()))
}

/// Byte range of `part` inside `whole`; an empty part that is not a subslice (the
/// missing revision) maps to the empty range at the end.
fn range_in(whole: &str, part: &str) -> (usize, usize) {
    (part.as_ptr() as usize)
        .checked_sub(whole.as_ptr() as usize)
        .filter(|start| start + part.len() <= whole.len())
        .map_or((whole.len(), whole.len()), |start| {
            (start, start + part.len())
        })
}

impl DebVersion {
    /// Parse as dpkg does, refusing what dpkg refuses.
    pub fn parse(text: &str) -> Result<Self, String> {
        let p = parts(text).map_err(|e| e.message(text))?;
        let trimmed = text.trim_matches(is_blank);
        Ok(DebVersion {
            text: trimmed.to_string(),
            epoch: p.epoch,
            upstream: range_in(trimmed, p.upstream),
            revision: range_in(trimmed, p.revision),
        })
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            epoch: self.epoch,
            upstream: &self.text[self.upstream.0..self.upstream.1],
            revision: &self.text[self.revision.0..self.revision.1],
        }
    }

    /// Order `text` against this version without allocating; `None` when `text` is not
    /// a version dpkg accepts.
    pub fn compare_text(&self, text: &str) -> Option<Ordering> {
        parts(text).ok().map(|p| cmp_parts(&p, &self.parts()))
    }

    /// Why `text` is not a Debian version, or `None` when it is one.
    pub fn check(text: &str) -> Option<String> {
        parts(text).err().map(|e| e.message(text))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_parts(&self.parts(), &other.parts())
    }
}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two version strings; `Err` says why dpkg would refuse one of them.
pub fn compare(a: &str, b: &str) -> Result<Ordering, String> {
    let pa = parts(a).map_err(|e| e.message(a))?;
    let pb = parts(b).map_err(|e| e.message(b))?;
    Ok(cmp_parts(&pa, &pb))
}

/// dpkg's character weight: `~` below the end of the string (0), letters at their code,
/// everything else above all letters.
///
/// A byte of a non-ASCII character (dpkg warns about it and goes on) weighs its own value:
/// dpkg reads it through a `char`, signed on amd64 and i386, so its `c + 256` is the byte
/// again, below `+`, `-` and `.`, though above every letter. hark follows amd64, Debian's
/// reference architecture; dpkg on arm64 (unsigned `char`) ranks them above every symbol.
fn order(c: u8) -> i32 {
    if c.is_ascii_digit() {
        0
    } else if c.is_ascii_alphabetic() || !c.is_ascii() {
        c as i32
    } else if c == b'~' {
        -1
    } else if c != 0 {
        c as i32 + 256
    } else {
        0
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    // Reading past the end yields 0, exactly like the NUL terminator dpkg relies on.
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(at(a, i));
            let bc = order(at(b, j));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == b'0' {
            i += 1;
        }
        while at(b, j) == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while at(a, i).is_ascii_digit() && at(b, j).is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = at(a, i).cmp(&at(b, j));
            }
            i += 1;
            j += 1;
        }
        if at(a, i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if at(b, j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn cmp(a: &str, b: &str) -> Ordering {
        compare(a, b).unwrap()
    }

    #[test]
    fn known_orderings() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0-0", "1.0", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("1.0a", "1.0.", Less),
            ("1.0", "1.0a", Less),
            ("1:0.1", "2.0", Greater),
            ("2.0", "10.0", Less),
            ("1.002", "1.2", Equal),
            ("1.2-1", "1.2-1ubuntu1", Less),
            ("1.2-10", "1.2-9", Greater),
            ("7.6p2-4", "7.6-0", Greater),
            ("1.0.3-3", "1.0-1", Greater),
            ("1.3", "1.2.2-2", Greater),
            ("1.3", "1.2.2", Greater),
            ("0-pre", "0-pre", Equal),
            ("0-pre", "0-pree", Less),
            ("1.1.6r2-2", "1.1.6r-1", Greater),
            ("2.6b2-1", "2.6b-2", Greater),
            ("98.1p5-1", "98.1-pre2-b6-2", Less),
            ("0.4a6-2", "0.4-1", Greater),
            ("1:3.0.5-2", "1:3.0.5.1", Less),
            ("10.11.1.3-2", "10.11.1.3-2", Equal),
            ("4.4.3-2", "4.4.3-2", Equal),
            ("1:0.4", "10.3", Greater),
            ("1:1.25-4", "1:1.25-8", Less),
            ("0:1.18.36", "1.18.36", Equal),
            ("1.18.36", "1.18.35", Greater),
            ("0:1.18.36", "1.18.35", Greater),
            ("9:1.18.36:5.4-20", "10:0.5.1-22", Less),
            ("1:0.1.2-1", "0.1-1", Greater),
            ("1.0~a", "1.0~b", Less),
            // Non-ASCII bytes, as dpkg on amd64 weighs them (see `order`).
            ("4\u{e9}", "4+", Less),
            ("4\u{e9}", "4z", Greater),
            ("4\u{e9}", "4~", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn dpkg_refusals() {
        for bad in [
            "",
            " ",
            ":1.0",
            "1:",
            "a:1.0",
            "1.0-",
            "1 0",
            "-1",
            "99999999999:1",
        ] {
            assert!(DebVersion::parse(bad).is_err(), "{bad:?} should be refused");
        }
        // dpkg only warns about these, and still compares them.
        for odd in ["a1.0", "1.0_x", "1.0-a_b"] {
            assert!(DebVersion::parse(odd).is_ok(), "{odd:?} should be accepted");
        }
    }

    /// Deterministic generator (xorshift) so the table is the same on every run.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    fn gen_part(g: &mut Gen) -> String {
        const PIECES: &[&str] = &[
            "0", "1", "2", "9", "10", "01", "00", "100", "a", "b", "z", "A", "Z", "rc", "beta",
            "~", "~~", "~rc", ".", "+", "+b", "+dfsg", "-", "", "p", "git", "1a", "a1",
        ];
        // Every upstream starts with a digit so dpkg never prints warnings into our pipe.
        let mut s = g
            .pick(&["0", "1", "2", "10", "1.0", "1.2", "01"])
            .to_string();
        let n = g.next() % 4;
        for _ in 0..n {
            s.push_str(g.pick(PIECES));
        }
        s
    }

    fn gen_version(g: &mut Gen) -> String {
        let mut v = String::new();
        if g.chance(20) {
            v.push_str(g.pick(&["0", "1", "2", "10"]));
            v.push(':');
        }
        v.push_str(&gen_part(g));
        if g.chance(50) {
            v.push('-');
            let mut rev = g
                .pick(&[
                    "0", "1", "2", "10", "1ubuntu1", "0.1", "1~bpo1", "1+b1", "a",
                ])
                .to_string();
            if g.chance(20) {
                rev.push_str(g.pick(&["~", "a", "1", ".1", "+deb12u1"]));
            }
            v.push_str(&rev);
        }
        v
    }

    /// Found by tests/prop_dpkg.rs: dpkg trims only spaces and tabs (`c_isblank`); a
    /// newline is part of the version, so `0\n` sorts after `0` and `0\n\x0b` is valid.
    #[test]
    fn only_spaces_and_tabs_are_trimmed() {
        assert_eq!(compare("0 ", "0"), Ok(Ordering::Equal));
        assert_eq!(compare("\t0", "0"), Ok(Ordering::Equal));
        assert_eq!(compare("0\n", "0"), Ok(Ordering::Greater));
        assert_eq!(compare("\n0", "0"), Ok(Ordering::Greater));
        assert_eq!(compare("0\n\u{b}", "0"), Ok(Ordering::Greater));
        assert_eq!(compare("0\n ", "0"), Ok(Ordering::Greater));
        assert!(compare("0 \n", "0").is_err());
        assert!(compare("0 a", "0").is_err());
    }

    /// Found by tests/prop_dpkg.rs: dpkg reads the epoch with strtol(3), which skips
    /// leading white space and takes a sign; `-0` is 0, not negative.
    #[test]
    fn the_epoch_is_read_as_strtol_reads_it() {
        assert_eq!(compare("\n0:1", "1"), Ok(Ordering::Equal));
        assert_eq!(compare("\r\u{b}2:1", "2:1"), Ok(Ordering::Equal));
        assert_eq!(compare("+1:2", "1:2"), Ok(Ordering::Equal));
        assert_eq!(compare("-0:1", "1"), Ok(Ordering::Equal));
        assert_eq!(compare("\n0:.", "0"), Ok(Ordering::Greater));
        assert!(compare("-1:1", "1").is_err());
        assert!(compare("+:1", "1").is_err());
        assert!(compare("1a:1", "1").is_err());
    }

    fn generated_pairs() -> Vec<(String, String)> {
        let tricky = [
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0-0"),
            ("1:1.0", "2.0"),
            ("1.0a", "1.0+"),
            ("1.0~", "1.0~~"),
            ("2.30-1", "2.3-1"),
            ("1.00", "1.0"),
            ("1.0-1~bpo1", "1.0-1"),
            ("0:0", "0"),
            ("1.0+b1", "1.0.1"),
            ("1.2.3-1-2", "1.2.3-1"),
            ("1.0-a", "1.0-b"),
            ("1.0-1a", "1.0-1+"),
            ("1a", "1A"),
            ("1.0~a~b", "1.0~a"),
            ("3.0-1", "3.0-1.0"),
            ("1:0", "0:99"),
            ("1.0.", "1.0"),
            ("1.0+", "1.0."),
            ("010", "10"),
        ];
        let mut pairs: Vec<(String, String)> = tricky
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        while pairs.len() < 2_400 {
            let a = gen_version(&mut g);
            // Near neighbours exercise far more of the comparison than random pairs.
            let b = if g.chance(40) {
                let mut b = a.clone();
                b.push_str(g.pick(&["~", "a", "1", ".0", "+b1", "-1", "~rc1", "0"]));
                b
            } else {
                gen_version(&mut g)
            };
            if DebVersion::parse(&a).is_ok() && DebVersion::parse(&b).is_ok() {
                pairs.push((a, b));
            }
        }
        pairs
    }

    /// Ask dpkg only about the relation we computed: one process per pair, and a `true`
    /// answer pins dpkg's ordering to ours exactly.
    #[test]
    fn generated_table_agrees_with_dpkg() {
        let pairs = generated_pairs();
        assert!(pairs.len() >= 2_000);
        let dpkg_present = Command::new("dpkg")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !dpkg_present {
            println!(
                "SKIPPED: dpkg not found; the {} generated pairs were not compared",
                pairs.len()
            );
            return;
        }
        let mut input = String::new();
        for (a, b) in &pairs {
            let op = match cmp(a, b) {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            input.push_str(&format!("{a} {op} {b}\n"));
        }
        // Two shells, one per core, each answering one line per pair in order.
        let lines: Vec<&str> = input.lines().collect();
        let half = lines.len() / 2;
        let chunks = [&lines[..half], &lines[half..]];
        let script = r#"while read a op b; do
            if dpkg --compare-versions "$a" "$op" "$b" 2>/dev/null; then echo y; else echo n; fi
        done"#;
        let children: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let mut child = Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn sh");
                let mut stdin = child.stdin.take().expect("stdin");
                let text = chunk.join("\n") + "\n";
                std::thread::spawn(move || stdin.write_all(text.as_bytes()));
                child
            })
            .collect();
        let mut answers = Vec::new();
        for child in children {
            let out = child.wait_with_output().expect("sh output");
            answers.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
        assert_eq!(answers.len(), lines.len(), "dpkg answered every pair");
        let mismatches: Vec<&str> = lines
            .iter()
            .zip(&answers)
            .filter(|(_, ans)| ans.as_str() != "y")
            .map(|(line, _)| *line)
            .collect();
        assert!(
            mismatches.is_empty(),
            "{} of {} pairs disagree with dpkg, e.g. (ours) {:?}",
            mismatches.len(),
            lines.len(),
            &mismatches[..mismatches.len().min(10)]
        );
        println!(
            "compared {} version pairs with dpkg --compare-versions",
            lines.len()
        );
    }
}
