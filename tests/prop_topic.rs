//! Topic patterns against a reference nobody here wrote the matcher of: each generated
//! pattern is translated straightforwardly into a `regex` (whose engine is linear and
//! independently tested), and `TopicPattern::matches`, the rules' `TopicIndex` trie (one
//! index holding many patterns at once) and the regex must agree on generated topics.
//! Then the time: worst-case patterns (many `**`, `*` and in-segment globs such as
//! `a*a*a*b`) against the longest topics must cost about what the same pattern costs
//! against an easy topic of the same size, never an exponential blow-up.

mod prop_support;

use std::time::{Duration, Instant};

use hark::rules::index::TopicIndex;
use hark::topic::{TopicPattern, MAX_PATTERN_SEGMENTS, MAX_TOPIC_SEGMENTS};
use proptest::prelude::*;
use regex::Regex;

/// Segment words from a tiny alphabet, so that patterns and topics meet often.
const WORD: &str = "(a|b|ab|ba|aa|é|x-1)";

fn pattern_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::string::string_regex(WORD).expect("regex"),
        2 => Just("*".to_string()),
        2 => Just("**".to_string()),
        2 => proptest::string::string_regex("[ab?*é]{1,4}")
            .expect("regex")
            .prop_filter("a glob, not * or **", |s| !s.contains("**") && s != "*"),
        1 => prop::collection::vec(proptest::string::string_regex(WORD).expect("regex"), 1..4)
            .prop_map(|alts| format!("{{{}}}", alts.join(","))),
    ]
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(pattern_segment(), 1..8).prop_map(|s| s.join("."))
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(proptest::string::string_regex(WORD).expect("regex"), 1..10)
        .prop_map(|s| s.join("."))
}

/// The reference: match `"." + topic` against one regex piece per pattern segment.
fn to_regex(pattern: &str) -> Regex {
    let mut re = String::from("^");
    for seg in pattern.split('.') {
        match seg {
            "**" => re.push_str(r"(?:\.[^.]+)*"),
            "*" => re.push_str(r"\.[^.]+"),
            _ if seg.starts_with('{') => {
                let alts: Vec<String> = seg[1..seg.len() - 1]
                    .split(',')
                    .map(regex::escape)
                    .collect();
                re.push_str(&format!(r"\.(?:{})", alts.join("|")));
            }
            _ => {
                re.push_str(r"\.");
                for c in seg.chars() {
                    match c {
                        '*' => re.push_str("[^.]*"),
                        '?' => re.push_str("[^.]"),
                        c => re.push_str(&regex::escape(&c.to_string())),
                    }
                }
            }
        }
    }
    re.push('$');
    Regex::new(&re).expect("the translation is a valid regex")
}

fn reference_matches(re: &Regex, topic: &str) -> bool {
    topic.split('.').count() <= MAX_TOPIC_SEGMENTS && re.is_match(&format!(".{topic}"))
}

#[test]
fn patterns_match_as_their_regex_translation() {
    proptest!(prop_support::config("prop_topic", 400), |(patterns in prop::collection::vec(pattern(), 1..6),
                                                        topics in prop::collection::vec(topic(), 1..20))| {
        let compiled: Vec<TopicPattern> = patterns
            .iter()
            .map(|p| TopicPattern::parse(p).map_err(|e| TestCaseError::fail(format!("{p}: {e}"))))
            .collect::<Result<_, _>>()?;
        let regexes: Vec<Regex> = patterns.iter().map(|p| to_regex(p)).collect();
        let mut index = TopicIndex::new();
        for (i, p) in compiled.iter().enumerate() {
            index.insert(p, i as u32);
        }
        for t in &topics {
            let expected: Vec<u32> = (0..patterns.len() as u32)
                .filter(|&i| reference_matches(&regexes[i as usize], t))
                .collect();
            for (i, p) in compiled.iter().enumerate() {
                prop_assert_eq!(p.matches(t), expected.contains(&(i as u32)), "pattern {} topic {}", p, t);
            }
            let mut found = Vec::new();
            index.lookup(t, &mut found);
            found.sort_unstable();
            found.dedup();
            prop_assert_eq!(&found, &expected, "index of {:?}, topic {}", patterns, t);
        }
    });
}

/// Median of a few timings of `f`.
fn time(mut f: impl FnMut()) -> Duration {
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    runs.sort();
    runs[2]
}

#[test]
fn matching_time_stays_linear_in_the_input() {
    // The longest patterns and topics there may be, shaped so that a backtracking matcher
    // tries every way to split the topic: `**` and `*` alternating, in-segment globs with
    // many stars against long segments that almost match, and no match at the end.
    let glob = "a*a*a*a*a*a*a*a*b";
    let worst_pattern: Vec<&str> = (0..MAX_PATTERN_SEGMENTS - 1)
        .map(|i| if i % 2 == 0 { "**" } else { glob })
        .chain(["c"])
        .collect();
    let worst_pattern = worst_pattern.join(".");
    let long_segment = "a".repeat(200);
    let topic: Vec<&str> = vec![long_segment.as_str(); MAX_TOPIC_SEGMENTS];
    let topic = topic.join(".");
    let p = TopicPattern::parse(&worst_pattern).expect("pattern");
    let mut index = TopicIndex::new();
    index.insert(&p, 0);
    assert!(!p.matches(&topic));
    let worst = time(|| {
        assert!(!p.matches(&topic));
        let mut out = Vec::new();
        index.lookup(&topic, &mut out);
        assert!(out.is_empty());
    });
    // A segment glob alone over one very long segment: quadratic at worst for the classic
    // single-star algorithm, exponential for a naive recursive one.
    let glob_pattern = TopicPattern::parse("a*a*a*a*a*a*a*a*a*a*a*a*b").expect("pattern");
    let huge = "a".repeat(20_000);
    let glob_time = time(|| assert!(!glob_pattern.matches(&huge)));
    // The bound is generous (a shared 2-core machine, a debug build): what it catches is a
    // blow-up, which takes seconds to hours at these sizes.
    eprintln!("worst-case topic match: {worst:?}; 20k-char glob: {glob_time:?}");
    assert!(
        worst < Duration::from_millis(500),
        "worst case took {worst:?}"
    );
    assert!(
        glob_time < Duration::from_millis(500),
        "glob took {glob_time:?}"
    );
}

#[test]
fn segment_globs_scale_linearly() {
    // Doubling the input about doubles the time, for the shapes that hurt backtracking.
    let p = TopicPattern::parse("**.a*a*a*a*a*b.**.*.c").expect("pattern");
    let topic = |n: usize| vec!["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"; n].join(".");
    let (small, large) = (topic(MAX_TOPIC_SEGMENTS / 4), topic(MAX_TOPIC_SEGMENTS));
    let t_small = time(|| assert!(!p.matches(&small)));
    let t_large = time(|| assert!(!p.matches(&large)));
    eprintln!(
        "{} segments: {t_small:?}, {} segments: {t_large:?}",
        MAX_TOPIC_SEGMENTS / 4,
        MAX_TOPIC_SEGMENTS
    );
    // 4x the input: linear is ~4x; allow noise up to 16x plus a floor for tiny timings.
    assert!(
        t_large < t_small * 16 + Duration::from_millis(5),
        "4x the segments took {t_large:?} against {t_small:?}"
    );
}
