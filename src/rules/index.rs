//! The topic index: every rule's topic patterns in one trie over dotted segments, so that
//! finding the rules whose topic matches walks only the branches the topic can take,
//! however many rules are loaded.
//!
//! Literal segments (and each word of `{a,b}`) are hashed children; `*` and in-segment
//! globs are tried at every node that has them; `**` is a child that may swallow any number
//! of segments. Runs of `**` collapse into one.
//!
//! A `**` below another `**` is reached at many topic offsets, and sweeping it again from
//! each one made lookups exponential in the number of `**` (one rule froze a daemon). Such a
//! `**` remembers how far back it has been swept in this lookup, and a later sweep stops
//! there, so each node is visited at most once per topic offset. Topics over
//! [`MAX_TOPIC_SEGMENTS`] match nothing, as for [`TopicPattern::matches`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::topic::{Segment, SegmentGlob, TopicPattern, MAX_TOPIC_SEGMENTS};

/// FNV-1a: topic segments are short, and SipHash's setup cost dominated lookups here.
/// Flooding is no concern: the keys come from rule files, not from events.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Children = HashMap<Box<str>, u32, BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
struct Node {
    literal: Children,
    any_one: Option<u32>,
    any_many: Option<u32>,
    /// The path to this node already crossed a `**`, so its `**` child can be reached at
    /// several offsets and needs remembering how far it was swept.
    many_below_many: bool,
    globs: Vec<(SegmentGlob, u32)>,
    /// Rules whose pattern ends at this node.
    rules: Vec<u32>,
}

/// Rule ids by topic pattern.
#[derive(Debug)]
pub struct TopicIndex {
    nodes: Vec<Node>,
}

impl Default for TopicIndex {
    fn default() -> Self {
        TopicIndex {
            nodes: vec![Node::default()],
        }
    }
}

impl TopicIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `rule` (an id chosen by the caller) under `pattern`.
    pub fn insert(&mut self, pattern: &TopicPattern, rule: u32) {
        self.insert_at(0, pattern.segments(), false, rule);
    }

    fn child(&mut self, parent: u32, pick: impl FnOnce(&mut Node) -> &mut Option<u32>) -> u32 {
        let next = self.nodes.len() as u32;
        let slot = pick(&mut self.nodes[parent as usize]);
        match slot {
            Some(id) => *id,
            None => {
                *slot = Some(next);
                self.nodes.push(Node::default());
                next
            }
        }
    }

    fn literal_child(&mut self, parent: u32, word: &str) -> u32 {
        let next = self.nodes.len() as u32;
        let id = *self.nodes[parent as usize]
            .literal
            .entry(word.into())
            .or_insert(next);
        if id == next {
            self.nodes.push(Node::default());
        }
        id
    }

    fn insert_at(&mut self, node: u32, segments: &[Segment], under_many: bool, rule: u32) {
        let Some((first, rest)) = segments.split_first() else {
            let rules = &mut self.nodes[node as usize].rules;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
            return;
        };
        match first {
            Segment::Literal(word) => {
                let child = self.literal_child(node, word);
                self.insert_at(child, rest, under_many, rule);
            }
            Segment::Alternatives(words) => {
                for word in words {
                    let child = self.literal_child(node, word);
                    self.insert_at(child, rest, under_many, rule);
                }
            }
            Segment::AnyOne => {
                let child = self.child(node, |n| &mut n.any_one);
                self.insert_at(child, rest, under_many, rule);
            }
            Segment::AnyMany => {
                let rest = skip_double_stars(rest);
                self.nodes[node as usize].many_below_many |= under_many;
                let child = self.child(node, |n| &mut n.any_many);
                self.insert_at(child, rest, true, rule);
            }
            Segment::Glob(glob) => {
                let existing = self.nodes[node as usize]
                    .globs
                    .iter()
                    .find(|(g, _)| g == glob)
                    .map(|(_, id)| *id);
                let child = match existing {
                    Some(id) => id,
                    None => {
                        let id = self.nodes.len() as u32;
                        self.nodes.push(Node::default());
                        self.nodes[node as usize].globs.push((glob.clone(), id));
                        id
                    }
                };
                self.insert_at(child, rest, under_many, rule);
            }
        }
    }

    /// Append the ids of every rule with a pattern matching `topic` to `out`, sorted and
    /// without duplicates (a rule can match along several branches).
    pub fn lookup(&self, topic: &str, out: &mut Vec<u32>) {
        let start = out.len();
        // Only a topic this long can hold that many dots; others skip the count.
        if topic.len() >= MAX_TOPIC_SEGMENTS
            && topic.bytes().filter(|b| *b == b'.').count() >= MAX_TOPIC_SEGMENTS
        {
            return;
        }
        let mut swept = Vec::new();
        self.visit(0, Some(topic), &mut swept, out);
        let found = &mut out[start..];
        if found.len() > 1 {
            found.sort_unstable();
            let mut w = 1;
            for r in 1..found.len() {
                if found[r] != found[w - 1] {
                    found[w] = found[r];
                    w += 1;
                }
            }
            out.truncate(start + w);
        }
    }

    /// `rest` is the unmatched tail of the topic; `None` once every segment is consumed.
    /// `swept` holds, for each `**` node below another `**`, the longest tail it has been
    /// swept from in this lookup (as [`left`]).
    fn visit(
        &self,
        node: u32,
        rest: Option<&str>,
        swept: &mut Vec<(u32, usize)>,
        out: &mut Vec<u32>,
    ) {
        let n = &self.nodes[node as usize];
        if let Some(many) = n.any_many {
            // A sweep from a longer tail has visited every tail up to where the earlier
            // sweep began; this one covers the part before it.
            let done = if n.many_below_many {
                match swept.iter_mut().find(|(id, _)| *id == many) {
                    Some((_, from)) => {
                        let before = *from;
                        *from = before.max(left(rest));
                        Some(before)
                    }
                    None => {
                        swept.push((many, left(rest)));
                        None
                    }
                }
            } else {
                None
            };
            // `**` swallows zero segments, then one more at each dot.
            let mut tail = rest;
            loop {
                if done.is_some_and(|d| left(tail) <= d) {
                    break;
                }
                self.visit(many, tail, swept, out);
                match tail {
                    None => break,
                    Some(t) => tail = t.split_once('.').map(|(_, after)| after),
                }
            }
        }
        let Some(topic) = rest else {
            out.extend_from_slice(&n.rules);
            return;
        };
        let (segment, tail) = match topic.split_once('.') {
            Some((seg, after)) => (seg, Some(after)),
            None => (topic, None),
        };
        if let Some(&child) = n.literal.get(segment) {
            self.visit(child, tail, swept, out);
        }
        if let Some(child) = n.any_one {
            self.visit(child, tail, swept, out);
        }
        for (glob, child) in &n.globs {
            if glob.matches(segment) {
                self.visit(*child, tail, swept, out);
            }
        }
    }

    /// Number of trie nodes (for diagnostics and benchmarks).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[0].rules.is_empty()
    }
}

/// How much of the topic is left to match: 0 once every segment is consumed, so a longer
/// tail always compares greater.
fn left(rest: Option<&str>) -> usize {
    rest.map_or(0, |t| t.len() + 1)
}

fn skip_double_stars(mut rest: &[Segment]) -> &[Segment] {
    while let Some((Segment::AnyMany, tail)) = rest.split_first() {
        rest = tail;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> TopicIndex {
        let mut idx = TopicIndex::new();
        for (i, p) in patterns.iter().enumerate() {
            idx.insert(&TopicPattern::parse(p).unwrap(), i as u32);
        }
        idx
    }

    fn hits(idx: &TopicIndex, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.lookup(topic, &mut out);
        out
    }

    #[test]
    fn star_never_crosses_a_dot() {
        let idx = index(&["_lk.archive.*.published", "_lk.*"]);
        assert_eq!(hits(&idx, "_lk.archive.master.published"), vec![0]);
        assert_eq!(hits(&idx, "_lk.archive.a.b.published"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive"), vec![1]);
        assert_eq!(hits(&idx, "_lk"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive.published"), Vec::<u32>::new());
    }

    #[test]
    fn double_star_matches_zero_or_more() {
        let idx = index(&["_lk.**", "a.**.z", "**", "a.**.**.z"]);
        assert_eq!(hits(&idx, "_lk"), vec![0, 2]);
        assert_eq!(hits(&idx, "_lk.a.b.c"), vec![0, 2]);
        assert_eq!(hits(&idx, "a.z"), vec![1, 2, 3]);
        assert_eq!(hits(&idx, "a.b.c.z"), vec![1, 2, 3]);
        assert_eq!(hits(&idx, "a.b.c"), vec![2]);
        assert_eq!(hits(&idx, "x"), vec![2]);
    }

    #[test]
    fn literals_alternatives_and_globs() {
        let idx = index(&[
            "org.{debian,fedoraproject}.prod",
            "_lk.archive.package-*",
            "a.v?",
            "org.debian.prod",
        ]);
        assert_eq!(hits(&idx, "org.debian.prod"), vec![0, 3]);
        assert_eq!(hits(&idx, "org.fedoraproject.prod"), vec![0]);
        assert_eq!(hits(&idx, "org.ubuntu.prod"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "_lk.archive.package-upload-accepted"), vec![1]);
        assert_eq!(hits(&idx, "_lk.archive.package.x"), Vec::<u32>::new());
        assert_eq!(hits(&idx, "a.v1"), vec![2]);
        assert_eq!(hits(&idx, "a.v12"), Vec::<u32>::new());
    }

    #[test]
    fn many_double_stars_against_a_long_topic_are_cheap() {
        // Unremembered sweeps would visit the trie about C(200, 30) times.
        let pattern = format!("{}y", "**.x.".repeat(30));
        let idx = index(&[&pattern, "x.**.x.**.x.**.x.**.z"]);
        let topic = vec!["x"; 200].join(".");
        let started = std::time::Instant::now();
        assert_eq!(hits(&idx, &topic), Vec::<u32>::new());
        assert_eq!(hits(&idx, &format!("{topic}.y")), vec![0]);
        assert_eq!(hits(&idx, &format!("{topic}.z")), vec![1]);
        // Microseconds in fact; the bound only catches a return to exponential sweeps.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_topic_over_the_segment_limit_matches_nothing() {
        let idx = index(&["**", "t.**"]);
        let longest = vec!["t"; MAX_TOPIC_SEGMENTS].join(".");
        assert_eq!(hits(&idx, &longest), vec![0, 1]);
        assert_eq!(hits(&idx, &format!("{longest}.t")), Vec::<u32>::new());
        // Empty segments count too: 256 dots make 257 segments.
        assert_eq!(hits(&idx, &".".repeat(MAX_TOPIC_SEGMENTS - 1)), vec![0]);
        assert_eq!(
            hits(&idx, &".".repeat(MAX_TOPIC_SEGMENTS)),
            Vec::<u32>::new()
        );
    }

    /// Every sequence of 1..=max_len words, joined with dots.
    fn all_joined(words: &[&str], max_len: usize) -> Vec<String> {
        let mut level: Vec<String> = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..max_len {
            level = level
                .iter()
                .flat_map(|prefix| {
                    words.iter().map(move |w| {
                        if prefix.is_empty() {
                            (*w).to_string()
                        } else {
                            format!("{prefix}.{w}")
                        }
                    })
                })
                .collect();
            all.extend(level.iter().cloned());
        }
        all
    }

    #[test]
    fn one_trie_of_every_small_pattern_agrees_with_each_pattern() {
        // Shared prefixes, `**` under `**` and `**` next to literals all in one trie.
        let patterns = all_joined(&["a", "b", "*", "**", "{a,b}", "a*"], 4);
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let compiled: Vec<TopicPattern> = refs
            .iter()
            .map(|p| TopicPattern::parse(p).unwrap())
            .collect();
        let idx = index(&refs);
        for topic in all_joined(&["a", "b", "ab"], 5) {
            let want: Vec<u32> = compiled
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matches(&topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(hits(&idx, &topic), want, "topic {topic}");
        }
    }

    #[test]
    fn agrees_with_topic_pattern_matches() {
        let patterns = [
            "a", "a.b", "a.*", "a.**", "*.b", "**.b", "a.*.c", "a.**.c", "{a,x}.b", "a.b*", "**",
            "*", "a.*.*", "*.**.c", "a.b.c.d",
        ];
        let topics = [
            "a", "b", "a.b", "a.bb", "x.b", "a.b.c", "a.x.c", "a.b.b.c", "a.b.c.d", "c", "a.c",
        ];
        let idx = index(&patterns);
        for topic in topics {
            let want: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| TopicPattern::parse(p).unwrap().matches(topic))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(hits(&idx, topic), want, "topic {topic}");
        }
    }
}
