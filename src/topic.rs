//! Topic patterns over dotted segments: the one definition of what `_lk.archive.*.published`
//! means, shared by trust grants, `hark tail --topic` and rule matching.
//!
//! Semantics: a pattern is split at `.` into segments. `*` matches exactly one segment,
//! `**` matches zero or more segments, `{a,b}` matches one segment equal to any alternative,
//! and a segment holding `*` or `?` next to other text (`package-*`) is a glob within that
//! one segment (it never crosses a dot). Everything else is literal.

use std::fmt;

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
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    source: String,
    segments: Vec<Segment>,
}

impl TopicPattern {
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let segments = source
            .split('.')
            .map(parse_segment)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                PatternError::EmptySegment(_) => PatternError::EmptySegment(source.to_string()),
                other => other,
            })?;
        Ok(Self {
            source: source.to_string(),
            segments,
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

    pub fn matches(&self, topic: &str) -> bool {
        let parts: Vec<&str> = topic.split('.').collect();
        match_segments(&self.segments, &parts)
    }
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

fn match_segments(pattern: &[Segment], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((Segment::AnyMany, rest)) => {
            (0..=topic.len()).any(|skip| match_segments(rest, &topic[skip..]))
        }
        Some((seg, rest)) => match topic.split_first() {
            Some((first, tail)) => seg.matches_one(first) && match_segments(rest, tail),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        TopicPattern::parse(p).unwrap().matches(t)
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
