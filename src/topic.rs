//! Topic patterns over dotted segments: the one definition of what `_lk.archive.*.published`
//! means, shared by trust grants, `hark tail --topic` and rule matching.
//!
//! Semantics: a pattern is split at `.` into segments. `*` matches exactly one segment,
//! `**` matches zero or more segments, `{a,b}` matches one segment equal to any alternative,
//! and a segment holding `*` or `?` next to other text (`package-*`) is a glob within that
//! one segment (it never crosses a dot). Everything else is literal.
//!
//! Matching simulates the pattern as an automaton over segment positions, one bitset step
//! per topic segment, so its cost is at most topic segments × pattern segments however many
//! `**` a pattern holds (the backtracking matcher this replaced was exponential in them,
//! and one rule froze a daemon). Patterns are capped at [`MAX_PATTERN_SEGMENTS`] so the
//! positions fit one `u128`; topics longer than [`MAX_TOPIC_SEGMENTS`] match no pattern,
//! which bounds the work an event from outside can cause.

use std::fmt;

/// Most segments a pattern may have (positions 0..=64 fit the matcher's `u128`).
pub const MAX_PATTERN_SEGMENTS: usize = 64;

/// Topics with more segments than this match no pattern at all.
pub const MAX_TOPIC_SEGMENTS: usize = 256;

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches this exact segment.
    Literal(String),
    /// Matches any one of these exact segments (`{a,b}`).
    Alternatives(Vec<String>),
    /// `*`: any single segment.
    AnyOne,
    /// `**`: zero or more segments.
    AnyMany,
    /// A glob inside one segment, e.g. `package-*` or `v?`.
    Glob(SegmentGlob),
}

/// A `*`/`?` glob confined to one segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentGlob {
    text: String,
}

impl SegmentGlob {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Classic wildcard match with backtracking on the last `*`; linear in practice.
    pub fn matches(&self, segment: &str) -> bool {
        let pat: Vec<char> = self.text.chars().collect();
        let s: Vec<char> = segment.chars().collect();
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            if p < pat.len() && (pat[p] == '?' || pat[p] == s[i]) {
                p += 1;
                i += 1;
            } else if p < pat.len() && pat[p] == '*' {
                star = Some((p, i));
                p += 1;
            } else if let Some((sp, si)) = star {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            } else {
                return false;
            }
        }
        pat[p..].iter().all(|c| *c == '*')
    }
}

impl Segment {
    /// Does this single-segment matcher accept `segment`? (`AnyMany` is handled by callers.)
    pub fn matches_one(&self, segment: &str) -> bool {
        match self {
            Segment::Literal(l) => l == segment,
            Segment::Alternatives(alts) => alts.iter().any(|a| a == segment),
            Segment::AnyOne | Segment::AnyMany => true,
            Segment::Glob(g) => g.matches(segment),
        }
    }
}

/// Why a topic pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty topic pattern")]
    Empty,
    #[error("empty segment in topic pattern {0:?} (two dots in a row, or a leading/trailing dot)")]
    EmptySegment(String),
    #[error("unbalanced '{{' or '}}' in segment {0:?}")]
    Unbalanced(String),
    #[error("'**' must stand alone as a whole segment, found {0:?}")]
    GluedDoubleStar(String),
    #[error("alternatives {0:?} may hold only literal words (no '*', '?' or nesting)")]
    WildAlternative(String),
    #[error("topic pattern {pattern:?} has {found} segments; at most {limit} are allowed")]
    TooManySegments {
        pattern: String,
        found: usize,
        limit: usize,
    },
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    source: String,
    segments: Vec<Segment>,
    /// Bit `i` is set when `segments[i]` is `**`.
    many: u128,
}

impl TopicPattern {
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let found = source.split('.').count();
        if found > MAX_PATTERN_SEGMENTS {
            return Err(PatternError::TooManySegments {
                pattern: source.to_string(),
                found,
                limit: MAX_PATTERN_SEGMENTS,
            });
        }
        let segments = source
            .split('.')
            .map(parse_segment)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                PatternError::EmptySegment(_) => PatternError::EmptySegment(source.to_string()),
                other => other,
            })?;
        let many = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Segment::AnyMany))
            .fold(0u128, |m, (i, _)| m | 1 << i);
        Ok(Self {
            source: source.to_string(),
            segments,
            many,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the pattern has no wildcard at all.
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The literal text every matching topic starts with, for ZeroMQ prefix subscriptions
    /// (which are byte prefixes, so this never filters out a match).
    pub fn literal_prefix(&self) -> String {
        let mut prefix = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    prefix.push_str(l);
                    prefix.push('.');
                }
                Segment::Glob(g) => {
                    let lit: String = g
                        .as_str()
                        .chars()
                        .take_while(|c| *c != '*' && *c != '?')
                        .collect();
                    prefix.push_str(&lit);
                    return prefix;
                }
                // `**` may match zero segments, so the dot before it is not guaranteed.
                Segment::AnyMany => {
                    prefix.pop();
                    return prefix;
                }
                _ => return prefix,
            }
        }
        // A fully literal pattern: the topic itself, without the trailing dot.
        prefix.pop();
        prefix
    }

    /// Bit `i` of the state set means "the first `i` pattern segments have matched the
    /// topic segments read so far"; bit `segments.len()` is the accepting one.
    pub fn matches(&self, topic: &str) -> bool {
        let accept = 1u128 << self.segments.len();
        let mut active = self.skip_double_stars(1);
        for (read, part) in topic.split('.').enumerate() {
            if read == MAX_TOPIC_SEGMENTS {
                return false;
            }
            // A `**` may take this segment and stay; any other position must accept it.
            let mut next = active & self.many;
            let mut single = active & !self.many & !accept;
            while single != 0 {
                let i = single.trailing_zeros() as usize;
                single &= single - 1;
                if self.segments[i].matches_one(part) {
                    next |= 1 << (i + 1);
                }
            }
            active = self.skip_double_stars(next);
            if active == 0 {
                return false;
            }
        }
        active & accept != 0
    }

    /// Add the positions reached by letting `**`s take zero segments; a run of `**` takes
    /// one round per member.
    fn skip_double_stars(&self, mut active: u128) -> u128 {
        loop {
            let next = active | (active & self.many) << 1;
            if next == active {
                return active;
            }
            active = next;
        }
    }
}

/// Why `topic` cannot be published: an event's topic is literal, so anything a pattern
/// would read as a wildcard, and anything no pattern can match, is refused. Laniakea itself
/// would publish `_lk.archive.*.published` as is, and it would fire every rule watching
/// `_lk.archive.*.published`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if let Some(c) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        let what = if c.is_whitespace() {
            "a space"
        } else {
            "a control character"
        };
        return Err(format!("topic {topic:?} contains {what} ({c:?})"));
    }
    if let Some(c) = topic.chars().find(|c| "*?{}[]".contains(*c)) {
        return Err(format!(
            "topic {topic:?} contains {c:?}: a topic is literal; wildcards are for patterns in rules, grants and `hark tail --topic`"
        ));
    }
    if topic.split('.').any(str::is_empty) {
        return Err(format!(
            "topic {topic:?} has an empty segment (two dots in a row, or a leading/trailing dot)"
        ));
    }
    let segments = topic.split('.').count();
    if segments > MAX_TOPIC_SEGMENTS {
        return Err(format!(
            "topic has {segments} segments; at most {MAX_TOPIC_SEGMENTS} can match a pattern"
        ));
    }
    Ok(())
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn parse_segment(seg: &str) -> Result<Segment, PatternError> {
    if seg.is_empty() {
        return Err(PatternError::EmptySegment(seg.to_string()));
    }
    if seg == "*" {
        return Ok(Segment::AnyOne);
    }
    if seg == "**" {
        return Ok(Segment::AnyMany);
    }
    if seg.contains("**") {
        return Err(PatternError::GluedDoubleStar(seg.to_string()));
    }
    let opens = seg.matches('{').count();
    let closes = seg.matches('}').count();
    if opens != closes || opens > 1 {
        return Err(PatternError::Unbalanced(seg.to_string()));
    }
    if opens == 1 {
        if !(seg.starts_with('{') && seg.ends_with('}')) {
            return Err(PatternError::Unbalanced(seg.to_string()));
        }
        let inner = &seg[1..seg.len() - 1];
        if inner.contains(['*', '?']) {
            return Err(PatternError::WildAlternative(seg.to_string()));
        }
        let alts: Vec<String> = inner.split(',').map(str::to_string).collect();
        if alts.iter().any(String::is_empty) {
            return Err(PatternError::EmptySegment(seg.to_string()));
        }
        return Ok(Segment::Alternatives(alts));
    }
    if seg.contains(['*', '?']) {
        return Ok(Segment::Glob(SegmentGlob {
            text: seg.to_string(),
        }));
    }
    Ok(Segment::Literal(seg.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        TopicPattern::parse(p).unwrap().matches(t)
    }

    /// The backtracking matcher that defined the semantics before: the reference the
    /// automaton must agree with (exponential in `**`, so only for small inputs).
    fn reference(pattern: &[Segment], topic: &[&str]) -> bool {
        match pattern.split_first() {
            None => topic.is_empty(),
            Some((Segment::AnyMany, rest)) => {
                (0..=topic.len()).any(|skip| reference(rest, &topic[skip..]))
            }
            Some((seg, rest)) => match topic.split_first() {
                Some((first, tail)) => seg.matches_one(first) && reference(rest, tail),
                None => false,
            },
        }
    }

    /// Does the automaton say what the reference says? Returns the answer.
    fn agree(p: &TopicPattern, topic: &str) -> bool {
        let parts: Vec<&str> = topic.split('.').collect();
        let got = p.matches(topic);
        assert_eq!(
            got,
            reference(p.segments(), &parts),
            "{p:?} topic {topic:?}"
        );
        got
    }

    /// Every sequence of 1..=max_len words, joined with dots.
    fn all_joined(words: &[&str], max_len: usize) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec![]];
        let mut all = Vec::new();
        for _ in 0..max_len {
            out = out
                .iter()
                .flat_map(|prefix| {
                    words.iter().map(move |w| {
                        let mut v = prefix.clone();
                        v.push(*w);
                        v
                    })
                })
                .collect();
            all.extend(out.iter().map(|v| v.join(".")));
        }
        all
    }

    #[test]
    fn agrees_with_the_backtracking_matcher_on_every_small_case() {
        let pattern_words = ["a", "b", "*", "**", "{a,ab}", "a*", "?", "*b"];
        // The empty word makes topics like `a..b` and `.a`, which patterns see as an empty
        // segment (only `*`, `**` and globs accept one).
        let topic_words = ["a", "b", "ab", ""];
        let patterns: Vec<TopicPattern> = all_joined(&pattern_words, 4)
            .iter()
            .map(|p| TopicPattern::parse(p).unwrap())
            .collect();
        let topics = all_joined(&topic_words, 4);
        let mut matched = 0;
        for p in &patterns {
            for t in &topics {
                matched += usize::from(agree(p, t));
            }
        }
        // Both outcomes are well represented, so agreement is not "never matches".
        let total = patterns.len() * topics.len();
        assert!(
            matched > total / 20 && matched < total / 2,
            "{matched} of {total}"
        );
    }

    #[test]
    fn agrees_with_the_backtracking_matcher_on_longer_random_cases() {
        let pattern_words = ["a", "b", "*", "**", "**", "{a,b}", "a?", "*a*"];
        let topic_words = ["a", "b", "ab", "ba", "aa"];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..20_000 {
            let plen = 1 + next(9);
            let pattern: Vec<&str> = (0..plen)
                .map(|_| pattern_words[next(pattern_words.len())])
                .collect();
            let tlen = 1 + next(12);
            let topic: Vec<&str> = (0..tlen)
                .map(|_| topic_words[next(topic_words.len())])
                .collect();
            agree(
                &TopicPattern::parse(&pattern.join(".")).unwrap(),
                &topic.join("."),
            );
        }
    }

    #[test]
    fn many_double_stars_against_a_long_topic_are_cheap() {
        // 30 `**` with a literal after each: the backtracking matcher would try about
        // C(200, 30) ways to place them before giving up.
        let pattern = format!("{}y", "**.x.".repeat(30));
        let p = TopicPattern::parse(&pattern).unwrap();
        let topic = vec!["x"; 200].join(".");
        let started = std::time::Instant::now();
        assert!(!p.matches(&topic));
        assert!(p.matches(&format!("{topic}.y")));
        assert!(!p.matches(&vec!["x"; 29].join(".")));
        // Microseconds in fact; the bound is only there to catch a return to backtracking.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn consecutive_double_stars_are_one() {
        assert!(m("a.**.**.**.z", "a.z"));
        assert!(m("a.**.**.**.z", "a.b.c.d.e.z"));
        assert!(!m("a.**.**.**.z", "a.b"));
        let all_stars = vec!["**"; MAX_PATTERN_SEGMENTS].join(".");
        assert!(m(&all_stars, &vec!["q"; MAX_TOPIC_SEGMENTS].join(".")));
    }

    #[test]
    fn segment_limits() {
        let at_limit = vec!["a"; MAX_PATTERN_SEGMENTS].join(".");
        assert!(TopicPattern::parse(&at_limit).is_ok());
        let over = vec!["a"; MAX_PATTERN_SEGMENTS + 1].join(".");
        let err = TopicPattern::parse(&over).unwrap_err();
        assert_eq!(
            err,
            PatternError::TooManySegments {
                pattern: over.clone(),
                found: MAX_PATTERN_SEGMENTS + 1,
                limit: MAX_PATTERN_SEGMENTS,
            }
        );
        assert!(err.to_string().contains("at most 64"), "{err}");

        // A topic over the limit matches nothing, not even `**`.
        let longest = vec!["t"; MAX_TOPIC_SEGMENTS].join(".");
        assert!(m("**", &longest));
        assert!(m("t.**", &longest));
        assert!(!m("**", &format!("{longest}.t")));
        assert!(!m("t.**", &format!("{longest}.t")));
        assert!(m("**", &".".repeat(MAX_TOPIC_SEGMENTS - 1)));
        assert!(!m("**", &".".repeat(MAX_TOPIC_SEGMENTS)));
    }

    #[test]
    fn star_is_exactly_one_segment() {
        assert!(m("_lk.archive.*", "_lk.archive.published"));
        assert!(!m("_lk.archive.*", "_lk.archive.master.published"));
        assert!(!m("_lk.archive.*", "_lk.archive"));
    }

    #[test]
    fn double_star_matches_zero_or_more() {
        assert!(m("_lk.**", "_lk"));
        assert!(m("_lk.**", "_lk.a.b.c"));
        assert!(m("a.**.z", "a.z"));
        assert!(m("a.**.z", "a.b.c.z"));
        assert!(!m("a.**.z", "a.b.c"));
        assert!(m("**", "anything.at.all"));
    }

    #[test]
    fn alternatives_and_segment_globs() {
        assert!(m("org.{debian,fedoraproject}.prod", "org.debian.prod"));
        assert!(!m("org.{debian,fedoraproject}.prod", "org.ubuntu.prod"));
        assert!(m(
            "_lk.archive.package-*",
            "_lk.archive.package-upload-accepted"
        ));
        assert!(!m("_lk.archive.package-*", "_lk.archive.package.x"));
        assert!(m("a.v?", "a.v1"));
        assert!(!m("a.v?", "a.v12"));
    }

    #[test]
    fn literal_prefix_never_excludes_a_match() {
        let p = |s: &str| TopicPattern::parse(s).unwrap().literal_prefix();
        assert_eq!(p("_lk.archive.*.published"), "_lk.archive.");
        assert_eq!(p("_lk.archive.package-*"), "_lk.archive.package-");
        assert_eq!(p("a.b"), "a.b");
        assert_eq!(p("**"), "");
        assert_eq!(p("a.**"), "a");
        assert!(TopicPattern::parse("a.**").unwrap().matches("a"));
    }

    #[test]
    fn topics_to_publish_are_literal_and_well_formed() {
        for good in [
            "_lk.archive.package-upload-accepted",
            "a",
            "org.fedoraproject.prod.x",
        ] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        let refused = |t: &str| check_topic(t).unwrap_err();
        assert!(refused("").contains("empty"));
        assert!(refused("a b").contains("a space"));
        assert!(refused("a\tb").contains("a space"));
        assert!(refused("a\u{7}b").contains("control"));
        for glob in [
            "_lk.archive.*.published",
            "a.**",
            "a.b?",
            "a.{b,c}",
            "a.[bc]",
            "a}",
        ] {
            assert!(refused(glob).contains("literal"), "{glob}");
        }
        for empty in ["a..b", ".a", "a.", "."] {
            assert!(refused(empty).contains("empty segment"), "{empty}");
        }
        assert_eq!(
            check_topic(&vec!["t"; MAX_TOPIC_SEGMENTS].join(".")),
            Ok(())
        );
        assert!(refused(&vec!["t"; MAX_TOPIC_SEGMENTS + 1].join(".")).contains("at most 256"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            TopicPattern::parse("a..b"),
            Err(PatternError::EmptySegment(_))
        ));
        assert!(matches!(
            TopicPattern::parse("a.b**"),
            Err(PatternError::GluedDoubleStar(_))
        ));
        assert!(matches!(
            TopicPattern::parse("a.{b,c"),
            Err(PatternError::Unbalanced(_))
        ));
        assert!(matches!(
            TopicPattern::parse("a.{b,*}"),
            Err(PatternError::WildAlternative(_))
        ));
    }
}
